//! Stream framing shared by the phone control stream and the edge-allocator streams.
//!
//! A frame is `type (varint) | length (varint) | payload (length bytes)`. The length is checked
//! against the stream's limit as soon as it has been read, before the payload arrives, so a
//! peer cannot make us buffer more than the limit by claiming a large frame.

use bytes::{Bytes, BytesMut};

use crate::{DecodeError, varint};

/// Type and extent of the frame at the front of a buffer, as found by [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame type.
    pub frame_type: u64,
    /// Bytes taken by the type and length varints.
    pub header_len: usize,
    /// Bytes of payload that follow the header.
    pub payload_len: usize,
}

impl FrameHeader {
    /// Header and payload together.
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Checks whether `buf` starts with a complete frame whose payload is at most `max_payload`.
///
/// Returns [`DecodeError::Incomplete`] while more bytes are needed and
/// [`DecodeError::FrameTooLarge`] as soon as the length is known to be over the limit.
pub fn check(buf: &[u8], max_payload: usize) -> Result<FrameHeader, DecodeError> {
    let (frame_type, type_len) = varint::decode(buf)?;
    let (len, len_len) = varint::decode(&buf[type_len..])?;
    if len > max_payload as u64 {
        return Err(DecodeError::FrameTooLarge { len, max: max_payload });
    }
    let header =
        FrameHeader { frame_type, header_len: type_len + len_len, payload_len: len as usize };
    if buf.len() < header.total_len() {
        return Err(DecodeError::Incomplete);
    }
    Ok(header)
}

/// Takes the next complete frame off the front of `buf`: its type and payload.
///
/// `Ok(None)` means "read more"; the buffer is untouched until a whole frame is there.
pub fn split(buf: &mut BytesMut, max_payload: usize) -> Result<Option<(u64, Bytes)>, DecodeError> {
    match check(buf, max_payload) {
        Ok(header) => {
            let mut frame = buf.split_to(header.total_len());
            let payload = frame.split_off(header.header_len).freeze();
            Ok(Some((header.frame_type, payload)))
        }
        Err(DecodeError::Incomplete) => Ok(None),
        Err(other) => Err(other),
    }
}

/// Where a frame being written starts; pass it to [`finish`] once the payload is written.
#[derive(Debug, Clone, Copy)]
#[must_use = "a frame started must be finished"]
pub struct FrameStart {
    length_at: usize,
}

/// Writes the frame type and a one-byte length placeholder; the payload follows.
pub fn begin(out: &mut BytesMut, frame_type: u64) -> FrameStart {
    varint::put(out, frame_type);
    let length_at = out.len();
    out.extend_from_slice(&[0]);
    FrameStart { length_at }
}

/// Fills in the length of the frame begun at `start`, in its shortest form.
///
/// Payloads under 64 bytes fit the placeholder; a longer one is shifted right by the extra
/// length bytes (one `memmove` per frame, not per field). Returns where the payload starts in
/// `out`.
pub fn finish(out: &mut BytesMut, start: FrameStart) -> usize {
    let payload_at = start.length_at + 1;
    let payload_len = out.len() - payload_at;
    let len_len = varint::encoded_len(payload_len as u64);
    if len_len > 1 {
        out.resize(out.len() + len_len - 1, 0);
        out.copy_within(payload_at..payload_at + payload_len, start.length_at + len_len);
    }
    let mut length_slot = &mut out[start.length_at..start.length_at + len_len];
    varint::put(&mut length_slot, payload_len as u64);
    start.length_at + len_len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload_len: usize) -> BytesMut {
        let mut out = BytesMut::new();
        let start = begin(&mut out, 0x22);
        out.extend((0..payload_len).map(|i| i as u8));
        let _ = finish(&mut out, start);
        out
    }

    #[test]
    fn lengths_use_the_shortest_form_across_the_boundaries() {
        for len in [0, 1, 63, 64, 65, 16_383, 16_384, 100_000] {
            let mut buf = framed(len);
            let header = check(&buf, usize::MAX).unwrap();
            assert_eq!(header.header_len, 1 + varint::encoded_len(len as u64));
            assert_eq!(header.payload_len, len);
            let (ty, payload) = split(&mut buf, usize::MAX).unwrap().unwrap();
            assert_eq!(ty, 0x22);
            assert!(payload.iter().enumerate().all(|(i, b)| *b == i as u8));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn too_large_is_refused_before_the_payload_arrives() {
        // Type 1, length 2^30 (four-byte varint), no payload at all.
        let buf = [0x01, 0xc0, 0, 0, 0, 0x40, 0, 0, 0];
        assert_eq!(check(&buf, 1024), Err(DecodeError::FrameTooLarge { len: 1 << 30, max: 1024 }));
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let full = framed(200);
        for cut in 0..full.len() {
            let mut partial = BytesMut::from(&full[..cut]);
            assert_eq!(split(&mut partial, 1024), Ok(None), "cut at {cut}");
            assert_eq!(partial.len(), cut, "nothing consumed at {cut}");
        }
    }
}
