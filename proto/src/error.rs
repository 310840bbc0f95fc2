//! The one error type every decoder in this crate returns.
//!
//! It is a plain `Copy` enum: decoders run on the hot path, so an error carries no heap data,
//! only what a metric label or a log line needs.

/// Why bytes from the network could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer ends before the frame does: read more bytes and try again. Only stream
    /// decoders return this; a datagram or a complete frame payload that ends early is
    /// [`DecodeError::Truncated`].
    #[error("incomplete: more bytes needed")]
    Incomplete,
    /// A complete frame or datagram ended in the middle of a field.
    #[error("truncated inside a field")]
    Truncated,
    /// Bytes were left over after the last field of a frame or datagram.
    #[error("{0} trailing bytes after the last field")]
    TrailingBytes(usize),
    /// The frame or datagram type is not one this side understands.
    #[error("unknown message type {0:#x}")]
    UnknownType(u64),
    /// A frame claims a payload longer than the limit for its stream.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The length the peer claimed.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// A length-prefixed field is longer than its limit.
    #[error("field `{field}` is {len} bytes, over the limit of {max}")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// The length the peer claimed.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// A field holds a value outside its range (an unknown enum tag, a number too large for its
    /// type, text that is not UTF-8, an empty list that must not be empty).
    #[error("field `{0}` holds an invalid value")]
    InvalidValue(&'static str),
    /// A batch holds more entries than the limit.
    #[error("batch holds more than {max} entries")]
    TooManyEntries {
        /// The limit in force.
        max: usize,
    },
}

impl DecodeError {
    /// A short, fixed name for metric labels and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::Truncated => "truncated",
            Self::TrailingBytes(_) => "trailing_bytes",
            Self::UnknownType(_) => "unknown_type",
            Self::FrameTooLarge { .. } => "frame_too_large",
            Self::FieldTooLong { .. } => "field_too_long",
            Self::InvalidValue(_) => "invalid_value",
            Self::TooManyEntries { .. } => "too_many_entries",
        }
    }
}
