//! A cursor over one complete payload (a frame body or a datagram), with typed field readers.
//!
//! Because the payload is complete, running out of bytes inside a field is
//! [`DecodeError::Truncated`], never `Incomplete`. Every length is checked against its limit
//! before any byte it covers is looked at.

use crate::{DecodeError, varint};

/// Reads fields front to back from a complete payload.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let (value, len) = varint::decode(self.buf).map_err(|_| DecodeError::Truncated)?;
        self.buf = &self.buf[len..];
        Ok(value)
    }

    pub(crate) fn varint_u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| DecodeError::InvalidValue(field))
    }

    pub(crate) fn varint_u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        u16::try_from(self.varint()?).map_err(|_| DecodeError::InvalidValue(field))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.buf.split_first().ok_or(DecodeError::Truncated)?;
        self.buf = rest;
        Ok(first)
    }

    /// Exactly `N` raw bytes (a fixed-size field such as a digest).
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        if self.buf.len() < N {
            return Err(DecodeError::Truncated);
        }
        let (field, rest) = self.buf.split_at(N);
        self.buf = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(field);
        Ok(out)
    }

    /// A varint length, checked against `max`, then that many bytes.
    pub(crate) fn bytes(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        if len > max as u64 {
            return Err(DecodeError::FieldTooLong { field, len, max });
        }
        let len = len as usize;
        if self.buf.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (field_bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(field_bytes)
    }

    /// Like [`Reader::bytes`], and the bytes must be UTF-8.
    pub(crate) fn text(&mut self, field: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let raw = self.bytes(field, max)?;
        std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidValue(field))
    }

    /// Items to the end of the payload, each read by `item`: at least one and at most `max`
    /// (more is refused before it is read); `field` names the count in the error.
    pub(crate) fn list<T>(
        &mut self,
        field: &'static str,
        max: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let mut items = Vec::new();
        while !self.is_empty() {
            if items.len() == max {
                return Err(DecodeError::InvalidValue(field));
            }
            items.push(item(self)?);
        }
        if items.is_empty() {
            return Err(DecodeError::InvalidValue(field));
        }
        Ok(items)
    }

    /// Every field has been read: anything left over is an error.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes(self.buf.len())) }
    }
}

/// Appends a varint length and then `bytes`.
pub(crate) fn put_bytes(out: &mut bytes::BytesMut, bytes: &[u8]) {
    varint::put(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}
