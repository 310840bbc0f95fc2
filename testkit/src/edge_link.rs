//! An edge worker's side of the allocator link, for the allocator's tests: QUIC with mutual
//! TLS (ALPN `shake-alloc/3`) and one stream of allocator frames, read and written whole or as
//! raw bytes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use quinn::crypto::rustls::QuicClientConfig;
use shake_ops::tls;
use shake_proto::{ALLOCATOR_ALPN, AllocatorFrame, Winner};

use crate::scratch::{ANY_PORT, Scratch};
use crate::stream;

/// The QUIC client configuration of an edge trusting `certs/ca.pem` and presenting the
/// certificate `certs/NAME.pem` of `identity` (none: no client certificate).
pub fn client_config(certs: &Path, identity: Option<&str>) -> quinn::ClientConfig {
    let rustls = match identity {
        Some(name) => tls::mutual_tls_client(
            &certs.join("ca.pem"),
            &certs.join(format!("{name}.pem")),
            &certs.join(format!("{name}.key")),
            ALLOCATOR_ALPN,
        ),
        None => tls::client(&certs.join("ca.pem"), ALLOCATOR_ALPN),
    }
    .expect("an edge's TLS configuration");
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(rustls).expect("TLS 1.3")))
}

/// A connection to the allocator at `addr`, or why the handshake failed.
pub async fn connect(
    addr: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<quinn::Connection, String> {
    let mut endpoint = quinn::Endpoint::client(ANY_PORT).expect("an edge's UDP socket");
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
    let conn = connect(addr, client_config(&scratch.certs(), Some("edge-1"))).await?;
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
#[derive(Debug)]
pub struct EdgeStream {
    /// The connection it is on.
    pub conn: quinn::Connection,
    /// Edge to allocator.
    pub send: quinn::SendStream,
    /// Allocator to edge.
    pub recv: quinn::RecvStream,
    /// Bytes read and not yet decoded.
    pub buf: BytesMut,
}

impl EdgeStream {
    /// Opens a stream on `conn`.
    pub async fn open(conn: &quinn::Connection) -> Self {
        let (send, recv) = conn.open_bi().await.expect("opening a stream");
        Self { conn: conn.clone(), send, recv, buf: BytesMut::new() }
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &AllocatorFrame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        self.send_raw(&out).await;
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("writing the stream");
    }

    /// Sends one frame to a peer that may already have refused the stream: its refusal (the
    /// stream stopped with a code) as an error string, as [`Self::recv`] gives one.
    pub async fn try_send(&mut self, frame: &AllocatorFrame) -> Result<(), String> {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        self.send.write_all(&out).await.map_err(|err| err.to_string())
    }

    /// The next frame with its raw bytes, or an error string (stream reset, timeout).
    pub async fn recv(&mut self) -> Result<(AllocatorFrame, Vec<u8>), String> {
        let with_bytes = |buf: &mut BytesMut| {
            let before = buf.clone();
            let frame = AllocatorFrame::decode(buf)?;
            Ok(frame.map(|frame| (frame, before[..before.len() - buf.len()].to_vec())))
        };
        stream::next_frame(&mut self.recv, &mut self.buf, Duration::from_secs(10), with_bytes).await
    }

    /// Frames until `wanted` takes one, skipping the rest, for `within` in all: the allocator
    /// sends a heartbeat every second, so a wait measured frame by frame would never end while
    /// it runs, and a frame that never comes would hang the test instead of failing it.
    pub async fn recv_until<T>(
        &mut self,
        within: Duration,
        mut wanted: impl FnMut(AllocatorFrame, Vec<u8>) -> Option<T>,
    ) -> Result<T, String> {
        let looking = async {
            loop {
                let (frame, raw) = self.recv().await?;
                if let Some(found) = wanted(frame, raw) {
                    return Ok(found);
                }
            }
        };
        stream::within(within, "frame wanted", looking).await
    }

    /// Frames until a `BatchResult` (10 s at most), skipping the rest: its sequence number,
    /// winners and raw bytes.
    pub async fn next_result(&mut self) -> Result<(u64, Vec<Winner>, Vec<u8>), String> {
        self.recv_until(Duration::from_secs(10), |frame, raw| match frame {
            AllocatorFrame::BatchResult { seq, winners, .. } => Some((seq, winners, raw)),
            _ => None,
        })
        .await
    }

    /// Frames until the stream ends (10 s at most): the error it ended with, or one that starts
    /// with "timeout".
    pub async fn closed_with(&mut self) -> String {
        let end = async {
            loop {
                if let Err(err) = self.recv().await {
                    return err;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), end)
            .await
            .unwrap_or_else(|_| "timeout: the stream stayed open".to_owned())
    }
}

/// Waits until the allocator whose metrics listen at `metrics` says it is draining (its
/// SIGTERM taken in), at most 10 s.
pub async fn until_draining(metrics: SocketAddr) {
    let started = std::time::Instant::now();
    loop {
        let ready = shake_ops::http::get(metrics, "/ready").unwrap_or_default();
        if shake_ops::http::body_of(&ready).contains("draining") {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never draining: {ready}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The drain answers a batch in flight, and only that: worker 7 of edge 1 connects to the
/// allocator at `alloc` and sends `batch(1)`; SIGTERM follows once it is drawn, its group
/// commit slowed (`SHAKE_FAILPOINT=allocator-slow-commit`), and batches 2 to 6 come after
/// it. Batch 1 must be answered before the allocator exits, with status 0, and no other: the
/// rest are left unanswered for the next allocator (a drain that drew what kept coming never
/// found nothing pending while an edge sent, and ran its full 10 s).
pub async fn assert_a_drain_answers_the_batch_in_flight(
    alloc: &mut crate::servers::Allocator,
    scratch: &Scratch,
    batch: impl Fn(u64) -> AllocatorFrame,
) {
    let mut stream = edge_worker(alloc.quic, scratch, 7).await.unwrap();
    let first = stream.recv().await.map(|(frame, _)| frame);
    assert!(matches!(first, Ok(AllocatorFrame::RoundState { .. })), "{first:?}");
    stream.send(&batch(1)).await;
    // Stopped once batch 1 is drawn (its group commit slowed by half a second), not before: a
    // drain draws nothing more.
    let drawn = "batch 1 drawn";
    crate::metrics::wait_until(alloc.metrics, "shake_allocator_batches_total", drawn, |n| n >= 1.0)
        .await;
    alloc.process.signal("TERM");
    until_draining(alloc.metrics).await;
    for seq in 2..=6 {
        stream.send(&batch(seq)).await;
    }
    let answer = stream.next_result().await;
    assert!(matches!(answer, Ok((1, _, _))), "the batch in flight at the drain: {answer:?}");
    // The stream ends with the allocator's exit: no answer, and no wait for one either.
    let after = stream.next_result().await;
    assert!(after.is_err(), "a batch sent after the drain began was drawn: {after:?}");
    assert!(!after.is_err_and(|e| e.starts_with("timeout")), "the drain never ended the stream");
    assert!(alloc.process.wait().success());
}
