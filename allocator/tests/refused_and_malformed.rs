//! Mutual TLS refuses edges without a certificate from the trusted CA; malformed and oversized
//! frames close the stream with the documented code and are counted.

use bytes::BytesMut;
use shake_ops::http::metric_sum;
use shake_proto::allocator::PROTOCOL_VERSION;
use shake_proto::{AllocatorFrame, ErrorCode, varint};
use shake_testkit::edge_link::{EdgeStream, client_config, connect};
use shake_testkit::metrics::scrape;
use shake_testkit::scratch::Scratch;
use shake_testkit::servers::Allocator;

async fn hello(stream: &mut EdgeStream, version: u32) {
    stream
        .send(&AllocatorFrame::EdgeHello {
            edge_id: 1,
            worker_id: 0,
            protocol_version: version,
            instance_id: 42,
            highest_answered_seq: 0,
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_without_a_trusted_certificate_are_refused() {
    let scratch = Scratch::new("mtls");
    let alloc =
        Allocator::start(&scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 10\n"));

    // No client certificate at all.
    let refused = try_session(&alloc, client_config(&scratch.certs(), None)).await;
    assert!(refused.is_err(), "{refused:?}");

    // A certificate from another CA.
    let other = Scratch::new("mtls-other");
    let refused = try_session(&alloc, client_config_mixed(&scratch, &other)).await;
    assert!(refused.is_err(), "{refused:?}");

    // A trusted edge still gets in and hears the round state.
    let conn = connect(alloc.quic, client_config(&scratch.certs(), Some("edge-1"))).await.unwrap();
    let mut stream = EdgeStream::open(&conn).await;
    hello(&mut stream, PROTOCOL_VERSION).await;
    assert!(matches!(stream.recv().await, Ok((AllocatorFrame::RoundState { .. }, _))));

    let text = scrape(alloc.metrics);
    assert!(metric_sum(&text, "shake_allocator_rejected_peers_total") >= 2.0, "{text}");
}

/// Connects, says hello and waits for the round state; any failure on the way is the error.
async fn try_session(alloc: &Allocator, config: quinn::ClientConfig) -> Result<(), String> {
    let conn = connect(alloc.quic, config).await?;
    // TLS 1.3 may report a refused client certificate only once the link is used.
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    AllocatorFrame::EdgeHello {
        edge_id: 1,
        worker_id: 0,
        protocol_version: PROTOCOL_VERSION,
        instance_id: 42,
        highest_answered_seq: 0,
    }
    .encode(&mut out);
    send.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut stream = EdgeStream { conn, send, recv, buf: BytesMut::new() };
    match stream.recv().await? {
        (AllocatorFrame::RoundState { .. }, _) => Ok(()),
        (other, _) => Err(format!("unexpected {}", other.name())),
    }
}

/// Trusts the allocator's CA but presents an edge certificate from another CA.
fn client_config_mixed(trusting: &Scratch, presenting: &Scratch) -> quinn::ClientConfig {
    let mixed = trusting.dir.join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(trusting.ca(), mixed.join("ca.pem")).unwrap();
    std::fs::copy(presenting.dir.join("certs/edge-1.pem"), mixed.join("edge-1.pem")).unwrap();
    std::fs::copy(presenting.dir.join("certs/edge-1.key"), mixed.join("edge-1.key")).unwrap();
    client_config(&mixed, Some("edge-1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_unexpected_frames_close_the_stream_with_their_code() {
    let scratch = Scratch::new("malformed");
    let alloc =
        Allocator::start(&scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 10\n"));
    let conn = connect(alloc.quic, client_config(&scratch.certs(), Some("edge-1"))).await.unwrap();
    // quinn reports a reset as "stream reset by peer: error N".
    let code = |c: ErrorCode| format!("error {}", c.code());

    // Garbage inside a well-framed Batch: a truncated entry.
    let mut stream = EdgeStream::open(&conn).await;
    hello(&mut stream, PROTOCOL_VERSION).await;
    stream.send_raw(&[0x22, 0x04, 0x01, 0x01, 0x01, 0x40]).await;
    let err = stream.closed_with().await;
    assert!(err.contains(&code(ErrorCode::MalformedFrame)), "{err}");

    // A frame length over the limit: refused from the header alone.
    let mut stream = EdgeStream::open(&conn).await;
    hello(&mut stream, PROTOCOL_VERSION).await;
    let mut header = BytesMut::new();
    varint::put(&mut header, 0x22);
    varint::put(&mut header, 1 << 30);
    stream.send_raw(&header).await;
    let err = stream.closed_with().await;
    assert!(err.contains(&code(ErrorCode::FrameTooLarge)), "{err}");

    // A batch before EdgeHello.
    let mut stream = EdgeStream::open(&conn).await;
    stream.send(&AllocatorFrame::Heartbeat { now_ms: 1 }).await;
    let err = stream.closed_with().await;
    assert!(err.contains(&code(ErrorCode::UnexpectedFrame)), "{err}");

    // A protocol version we do not speak.
    let mut stream = EdgeStream::open(&conn).await;
    hello(&mut stream, PROTOCOL_VERSION + 1).await;
    let err = stream.closed_with().await;
    assert!(err.contains(&code(ErrorCode::UnsupportedVersion)), "{err}");

    // The connection and the allocator are still fine.
    let mut stream = EdgeStream::open(&conn).await;
    hello(&mut stream, PROTOCOL_VERSION).await;
    assert!(matches!(stream.recv().await, Ok((AllocatorFrame::RoundState { .. }, _))));
    let text = scrape(alloc.metrics);
    assert!(metric_sum(&text, "shake_allocator_malformed_frames_total") >= 2.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_cannot_speak_for_another_edge_id() {
    let scratch = Scratch::new("edge-id");
    let alloc =
        Allocator::start(&scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 10\n"));
    // edge-2's certificate, claiming to be edge 1.
    let conn = connect(alloc.quic, client_config(&scratch.certs(), Some("edge-2"))).await.unwrap();
    let mut stream = EdgeStream::open(&conn).await;
    hello(&mut stream, PROTOCOL_VERSION).await;
    let err = stream.closed_with().await;
    let reason = conn.closed().await.to_string();
    assert!(reason.contains(&ErrorCode::EdgeRejected.code().to_string()), "{err} / {reason}");
    // And as itself it is welcome.
    let conn = connect(alloc.quic, client_config(&scratch.certs(), Some("edge-2"))).await.unwrap();
    let mut stream = EdgeStream::open(&conn).await;
    stream
        .send(&AllocatorFrame::EdgeHello {
            edge_id: 2,
            worker_id: 0,
            protocol_version: PROTOCOL_VERSION,
            instance_id: 42,
            highest_answered_seq: 0,
        })
        .await;
    assert!(matches!(stream.recv().await, Ok((AllocatorFrame::RoundState { .. }, _))));
}

/// Whoever reaches the allocator's QUIC port with handshakes that never complete holds little:
/// past `RETRY_ABOVE` attempts in progress, an address that has not validated itself is asked
/// to Retry (nothing is kept for it), and an edge still gets in beside them. Before, every
/// attempt was a task and a handshake's state until the idle timeout, with a WARN line each
/// (review 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_complete_are_asked_to_retry_past_a_few() {
    use shake_allocator::edge_handshakes::RETRY_ABOVE;
    use shake_testkit::first_flight::FirstFlights;
    let scratch = Scratch::new("first-flights");
    let alloc =
        Allocator::start(&scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 10\n"));
    let config = client_config(&scratch.certs(), Some("edge-1"));
    let mut flights = FirstFlights::bind("127.0.0.1:0");
    let past = 8;
    for _ in 0..RETRY_ABOVE + past {
        flights.send(config.clone(), alloc.quic, "localhost");
    }
    let answers = flights.answers(std::time::Duration::from_millis(500));
    assert_eq!(answers.retries, past, "{answers:?}");
    assert!(answers.others >= RETRY_ABOVE, "the first ones' handshakes: {answers:?}");
    // An edge (its address validated by the Retry quinn answers) still gets in.
    let conn = connect(alloc.quic, config).await.unwrap();
    let mut stream = EdgeStream::open(&conn).await;
    hello(&mut stream, PROTOCOL_VERSION).await;
    assert!(matches!(stream.recv().await, Ok((AllocatorFrame::RoundState { .. }, _))));
}
