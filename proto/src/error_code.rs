//! QUIC application error codes: every way a peer can be closed, each named and documented.
//!
//! Codes are shared by both ALPNs. `0x0` is a normal close; `0x1x` are session problems,
//! `0x2x` protocol violations, `0x3x` are the edge's own choices (draining, overload), `0x4x`
//! concern edge-allocator links only.

/// Why a connection (or stream) was closed. The numeric value is what travels in
/// CONNECTION_CLOSE / RESET_STREAM / STOP_SENDING and in an `Error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// Normal close: nothing went wrong.
    NoError = 0x00,
    /// A bug or an unexpected failure on the closing side; retrying later may work.
    Internal = 0x01,
    /// The phone did not send `Hello` within the deadline after connecting.
    HelloTimeout = 0x10,
    /// The session token is malformed, forged, or signed by an unknown key.
    BadToken = 0x11,
    /// The session token has expired (or is not valid yet): log in again.
    TokenExpired = 0x12,
    /// The peer speaks a protocol version this side does not support.
    UnsupportedVersion = 0x13,
    /// A newer session of the same user started on this edge (another connection or device);
    /// this one is closed. Tell the user they are playing elsewhere; do not reconnect by
    /// yourself (two sessions would keep closing each other).
    SessionSuperseded = 0x14,
    /// The user already has a live session on this edge and has replaced sessions too often
    /// lately: this new one is refused and the live one stays. Do not retry at once; close
    /// the other session (or wait a minute).
    SessionInUse = 0x15,
    /// A frame could not be decoded.
    MalformedFrame = 0x20,
    /// A frame's length is over the stream's limit.
    FrameTooLarge = 0x21,
    /// A well-formed frame arrived where it is not allowed (a second `Hello`, a `Shake` before
    /// `Hello`, a frame only the other side may send).
    UnexpectedFrame = 0x22,
    /// The peer opened more streams, or sent more, than the protocol allows.
    Flood = 0x23,
    /// The edge is draining: reconnect to another edge.
    Draining = 0x30,
    /// The edge is over its connection or handshake limits: retry later.
    Overloaded = 0x31,
    /// The allocator refused the edge (unknown edge id, or a certificate name that does not
    /// match the edge id it claims).
    EdgeRejected = 0x40,
    /// A second stream for an edge worker that already has one; the newer stream wins and the
    /// older one is closed with this code.
    DuplicateWorker = 0x41,
    /// This allocator is a standby: another one leads the ledger. The connection close's
    /// reason is the leader's QUIC address (`ip:port`, empty while no one leads); connect
    /// there (or to the next configured allocator) and resend every unanswered batch.
    NotLeader = 0x42,
}

impl ErrorCode {
    /// Every code, for docs and tests.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::NoError,
        ErrorCode::Internal,
        ErrorCode::HelloTimeout,
        ErrorCode::BadToken,
        ErrorCode::TokenExpired,
        ErrorCode::UnsupportedVersion,
        ErrorCode::SessionSuperseded,
        ErrorCode::SessionInUse,
        ErrorCode::MalformedFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnexpectedFrame,
        ErrorCode::Flood,
        ErrorCode::Draining,
        ErrorCode::Overloaded,
        ErrorCode::EdgeRejected,
        ErrorCode::DuplicateWorker,
        ErrorCode::NotLeader,
    ];

    /// The wire value.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The code with this wire value, if it is one of ours.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| u64::from(c.code()) == code)
    }

    /// The documented name, `SCREAMING_SNAKE_CASE`, also used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::NoError => "NO_ERROR",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::HelloTimeout => "HELLO_TIMEOUT",
            ErrorCode::BadToken => "BAD_TOKEN",
            ErrorCode::TokenExpired => "TOKEN_EXPIRED",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::SessionSuperseded => "SESSION_SUPERSEDED",
            ErrorCode::SessionInUse => "SESSION_IN_USE",
            ErrorCode::MalformedFrame => "MALFORMED_FRAME",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ErrorCode::Flood => "FLOOD",
            ErrorCode::Draining => "DRAINING",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::EdgeRejected => "EDGE_REJECTED",
            ErrorCode::DuplicateWorker => "DUPLICATE_WORKER",
            ErrorCode::NotLeader => "NOT_LEADER",
        }
    }

    /// The close code for a decode failure on a stream.
    pub fn for_decode_error(err: &crate::DecodeError) -> Self {
        match err {
            crate::DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            crate::DecodeError::UnknownType(_) => ErrorCode::UnexpectedFrame,
            _ => ErrorCode::MalformedFrame,
        }
    }

    /// The close code for a refused session token.
    pub fn for_token_error(err: &crate::TokenError) -> Self {
        match err {
            crate::TokenError::Expired | crate::TokenError::NotYetValid => ErrorCode::TokenExpired,
            _ => ErrorCode::BadToken,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:#x})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "duplicate value for {code}");
            assert_eq!(ErrorCode::from_code(code.code().into()), Some(code));
        }
        assert_eq!(ErrorCode::from_code(0x99), None);
    }
}
