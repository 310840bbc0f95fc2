//! Reading whole frames off a QUIC stream, as the test phone and the test edge link both do:
//! bytes are read until a frame decodes, within a deadline.

use std::time::Duration;

use bytes::BytesMut;
use shake_proto::DecodeError;
use tokio::io::AsyncReadExt;

/// Reads `recv` into `buf` until `decode` takes a frame off its front, for `within` at most;
/// why not otherwise (the stream finished or failed, the bytes are not a frame, timeout).
pub(crate) async fn next_frame<T>(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    within: Duration,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, DecodeError>,
) -> Result<T, String> {
    tokio::time::timeout(within, async {
        loop {
            if let Some(frame) = decode(buf).map_err(|e| e.to_string())? {
                return Ok(frame);
            }
            match recv.read_buf(buf).await {
                Ok(0) => return Err("stream finished".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "timeout".to_owned())?
}

/// `looking` (frames read until the one wanted), for `within` in all: its own result, or
/// "timeout: no WHAT within ...". Each frame's own deadline does not bound such a wait: a
/// peer that keeps sending what is not wanted (heartbeats, notices) would hold it for ever.
pub(crate) async fn within<T>(
    within: Duration,
    what: &str,
    looking: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(within, looking)
        .await
        .map_err(|_| format!("timeout: no {what} within {within:?}"))?
}
