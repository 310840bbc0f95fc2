//! What hostile phones do beyond breaking the session's rules: a control frame far over the
//! protocol's limit, more streams than the edge allows, handshakes abandoned before `Hello`
//! from ever-new source ports. Each counts what the edge did about it.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::phone::PhoneContext;
use super::stats::Stats;

/// Streams a stream flooder tries to open, each way.
const FLOOD_STREAMS: usize = 32;
/// How long a flooder waits for each stream (the edge's stream limits hold them back).
const FLOOD_STREAM_PATIENCE: Duration = Duration::from_millis(50);
/// How long a connection flooder waits for each handshake before abandoning it.
const FLOOD_HANDSHAKE_PATIENCE: Duration = Duration::from_millis(200);
/// Pause between a connection flooder's attempts.
const FLOOD_PAUSE: Duration = Duration::from_millis(50);

/// Writes the header of a control frame far over the protocol's limit, then waits for the
/// edge to close the connection and records its code.
pub async fn send_oversized_frame(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    stats: &Stats,
) {
    let mut header = BytesMut::new();
    // An AwardAck (normally 8 bytes) claiming 16 MiB.
    shake_proto::varint::put(&mut header, shake_proto::control::frame_type::AWARD_ACK);
    shake_proto::varint::put(&mut header, 1 << 24);
    let _ = send.write_all(&header).await;
    let _ = send.write_all(&[0u8; 1024]).await;
    match tokio::time::timeout(Duration::from_secs(5), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            let code = close.error_code.into_inner();
            stats.closed_by_edge(
                shake_proto::ErrorCode::from_code(code).map_or("unknown", |c| c.name()),
            );
        }
        _ => stats.error("oversized frame: not closed by the edge"),
    }
}

/// Tries to open more streams than the edge allows, both kinds; counts those held back.
pub async fn flood_streams(conn: &quinn::Connection, stats: &Stats) {
    let mut opened = Vec::new();
    for _ in 0..FLOOD_STREAMS {
        match tokio::time::timeout(FLOOD_STREAM_PATIENCE, conn.open_uni()).await {
            Ok(Ok(stream)) => opened.push(stream),
            _ => stats.limited("streams_held_back"),
        }
        match tokio::time::timeout(FLOOD_STREAM_PATIENCE, conn.open_bi()).await {
            Ok(Ok((stream, _))) => opened.push(stream),
            _ => stats.limited("streams_held_back"),
        }
    }
    if !opened.is_empty() {
        stats.error(format!("stream flood: {} streams opened", opened.len()));
    }
}

/// Handshakes from a fresh source port each time, abandoned before `Hello`, until the end.
/// One endpoint per flooder, moved to a new socket for each attempt: an endpoint of its own
/// per attempt lives on while its abandoned connection drains (about 3 s), and thousands of
/// them, each with its receive buffer, took the swarm to 6.5 GB and most of the machine's CPU
/// (measured: the honest phones' p50 went from 1.3 to 11.5 ms with the edge barely involved).
pub async fn flood_connections(index: usize, ctx: &PhoneContext) {
    let local = super::addresses::flooder(&ctx.edges);
    let Ok(endpoint) = super::client_endpoint(local) else {
        ctx.stats.error("flood: no socket");
        return;
    };
    let mut attempt = index;
    while Instant::now() < ctx.end {
        attempt += 1;
        let edge = ctx.edges[attempt % ctx.edges.len()];
        let fresh_port = std::net::UdpSocket::bind(local);
        if fresh_port.and_then(|socket| endpoint.rebind(socket)).is_err() {
            ctx.stats.error("flood: no socket");
            break;
        }
        if let Ok(connecting) =
            endpoint.connect_with(ctx.client_config.clone(), edge, &ctx.server_name)
        {
            match tokio::time::timeout(FLOOD_HANDSHAKE_PATIENCE, connecting).await {
                Ok(Ok(_abandoned)) => ctx.stats.limited("flood_handshakes_completed"),
                Ok(Err(quinn::ConnectionError::ConnectionClosed(close)))
                    if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                {
                    ctx.stats.limited("flood_handshakes_refused")
                }
                _ => ctx.stats.limited("flood_handshakes_unanswered"),
            }
        }
        tokio::time::sleep(FLOOD_PAUSE).await;
    }
}
