//! Frames on a phone's control stream (ALPN `shake/2`): the phone's first bidirectional stream,
//! carrying the session handshake, round notices, awards and their acknowledgements.
//!
//! Each frame is framed as in [`crate::frame`], with payloads of at most
//! [`MAX_CONTROL_PAYLOAD`] bytes.

use bytes::{Bytes, BytesMut};

use crate::datagram::{Outcome, Outcomes, Shake};
use crate::limits::{MAX_CONTROL_PAYLOAD, MAX_REASON, MAX_TOKEN};
use crate::reader::{Reader, put_bytes};
use crate::{DecodeError, Prize, RoundInfo, frame, varint};

/// Capability bit in `Hello`: the phone accepts QUIC DATAGRAM frames.
pub const CAP_DATAGRAMS: u64 = 1;

/// Frame type numbers on the control stream.
pub mod frame_type {
    /// [`Hello`](super::ControlFrame::Hello)
    pub const HELLO: u64 = 0x01;
    /// [`Welcome`](super::ControlFrame::Welcome)
    pub const WELCOME: u64 = 0x02;
    /// [`RoundNotice`](super::ControlFrame::RoundNotice)
    pub const ROUND_NOTICE: u64 = 0x03;
    /// [`Pace`](super::ControlFrame::Pace)
    pub const PACE: u64 = 0x04;
    /// [`Award`](super::ControlFrame::Award)
    pub const AWARD: u64 = 0x05;
    /// [`AwardAck`](super::ControlFrame::AwardAck)
    pub const AWARD_ACK: u64 = 0x06;
    /// [`Shake`](super::ControlFrame::Shake)
    pub const SHAKE: u64 = 0x07;
    /// [`Outcomes`](super::ControlFrame::Outcomes)
    pub const OUTCOMES: u64 = 0x08;
    /// [`GoAway`](super::ControlFrame::GoAway)
    pub const GO_AWAY: u64 = 0x09;
    /// [`Error`](super::ControlFrame::Error)
    pub const ERROR: u64 = 0x0a;
}

/// One frame on a phone's control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlFrame {
    /// Phone -> edge, first frame: who the phone is.
    Hello {
        /// The session token from the login service (see [`crate::token`]).
        token: Bytes,
        /// The phone app's protocol client version.
        client_version: u32,
        /// Capability bits, such as [`CAP_DATAGRAMS`].
        capabilities: u64,
    },
    /// Edge -> phone, answer to `Hello`.
    Welcome {
        /// The edge's clock, Unix milliseconds.
        server_time_ms: u64,
        /// Shake no more often than this, milliseconds.
        min_shake_interval_ms: u32,
        /// The current round.
        round: RoundInfo,
    },
    /// Edge -> phone: a round opened or closed.
    RoundNotice {
        /// The round.
        round: RoundInfo,
        /// Shake no more often than this, milliseconds.
        min_shake_interval_ms: u32,
    },
    /// Edge -> phone: a new minimum shake interval.
    Pace {
        /// Shake no more often than this, milliseconds.
        min_shake_interval_ms: u32,
    },
    /// Edge -> phone: the phone won.
    Award {
        /// Ledger id of the award; acknowledge it with `AwardAck`.
        award_id: u64,
        /// The round it was won in.
        round_id: u32,
        /// What it pays.
        prize: Prize,
    },
    /// Phone -> edge: the award was shown to the user.
    AwardAck {
        /// The acknowledged award.
        award_id: u64,
    },
    /// Phone -> edge: a shake, for phones without datagrams.
    Shake(Shake),
    /// Edge -> phone: outcomes, for phones without datagrams.
    Outcomes(Outcomes<Bytes>),
    /// Edge -> phone: this edge is draining; reconnect (elsewhere) after a pause.
    GoAway {
        /// Wait at least this long before reconnecting, milliseconds.
        reconnect_after_ms: u32,
    },
    /// Either way: a fatal error; the connection closes with the same code.
    Error {
        /// An [`ErrorCode`](crate::ErrorCode) value.
        code: u64,
        /// Human-readable reason, at most [`MAX_REASON`] bytes of UTF-8.
        reason: String,
    },
}

impl ControlFrame {
    /// Appends this frame, header included.
    ///
    /// # Panics
    /// If a field breaks a documented limit (a token longer than [`MAX_TOKEN`], a reason
    /// longer than [`MAX_REASON`]): such a frame could not be decoded by the peer.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = frame::begin(out, self.frame_type());
        match self {
            ControlFrame::Hello { token, client_version, capabilities } => {
                assert!(token.len() <= MAX_TOKEN, "token longer than {MAX_TOKEN} bytes");
                put_bytes(out, token);
                varint::put(out, u64::from(*client_version));
                varint::put(out, *capabilities);
            }
            ControlFrame::Welcome { server_time_ms, min_shake_interval_ms, round } => {
                varint::put(out, *server_time_ms);
                varint::put(out, u64::from(*min_shake_interval_ms));
                round.encode(out);
            }
            ControlFrame::RoundNotice { round, min_shake_interval_ms } => {
                round.encode(out);
                varint::put(out, u64::from(*min_shake_interval_ms));
            }
            ControlFrame::Pace { min_shake_interval_ms } => {
                varint::put(out, u64::from(*min_shake_interval_ms))
            }
            ControlFrame::Award { award_id, round_id, prize } => {
                varint::put(out, *award_id);
                varint::put(out, u64::from(*round_id));
                prize.encode(out);
            }
            ControlFrame::AwardAck { award_id } => varint::put(out, *award_id),
            ControlFrame::Shake(shake) => shake.encode_body(out),
            ControlFrame::Outcomes(outcomes) => out.extend_from_slice(outcomes.body()),
            ControlFrame::GoAway { reconnect_after_ms } => {
                varint::put(out, u64::from(*reconnect_after_ms))
            }
            ControlFrame::Error { code, reason } => {
                assert!(reason.len() <= MAX_REASON, "reason longer than {MAX_REASON} bytes");
                varint::put(out, *code);
                put_bytes(out, reason.as_bytes());
            }
        }
        frame::finish(out, start);
    }

    /// The frame type number.
    pub fn frame_type(&self) -> u64 {
        use frame_type::*;
        match self {
            ControlFrame::Hello { .. } => HELLO,
            ControlFrame::Welcome { .. } => WELCOME,
            ControlFrame::RoundNotice { .. } => ROUND_NOTICE,
            ControlFrame::Pace { .. } => PACE,
            ControlFrame::Award { .. } => AWARD,
            ControlFrame::AwardAck { .. } => AWARD_ACK,
            ControlFrame::Shake(_) => SHAKE,
            ControlFrame::Outcomes(_) => OUTCOMES,
            ControlFrame::GoAway { .. } => GO_AWAY,
            ControlFrame::Error { .. } => ERROR,
        }
    }

    /// A short, fixed name for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            ControlFrame::Hello { .. } => "hello",
            ControlFrame::Welcome { .. } => "welcome",
            ControlFrame::RoundNotice { .. } => "round_notice",
            ControlFrame::Pace { .. } => "pace",
            ControlFrame::Award { .. } => "award",
            ControlFrame::AwardAck { .. } => "award_ack",
            ControlFrame::Shake(_) => "shake",
            ControlFrame::Outcomes(_) => "outcomes",
            ControlFrame::GoAway { .. } => "go_away",
            ControlFrame::Error { .. } => "error",
        }
    }

    /// Takes the next frame off the front of a stream buffer. `Ok(None)`: read more.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, DecodeError> {
        match frame::split(buf, MAX_CONTROL_PAYLOAD)? {
            Some((frame_type, payload)) => Self::parse(frame_type, &payload).map(Some),
            None => Ok(None),
        }
    }

    /// Parses one complete payload of the given frame type.
    pub fn parse(frame_type: u64, payload: &Bytes) -> Result<Self, DecodeError> {
        use frame_type::*;
        let mut r = Reader::new(payload);
        let frame = match frame_type {
            HELLO => ControlFrame::Hello {
                token: payload.slice_ref(r.bytes("token", MAX_TOKEN)?),
                client_version: r.varint_u32("client version")?,
                capabilities: r.varint()?,
            },
            WELCOME => ControlFrame::Welcome {
                server_time_ms: r.varint()?,
                min_shake_interval_ms: r.varint_u32("min shake interval")?,
                round: RoundInfo::decode(&mut r)?,
            },
            ROUND_NOTICE => ControlFrame::RoundNotice {
                round: RoundInfo::decode(&mut r)?,
                min_shake_interval_ms: r.varint_u32("min shake interval")?,
            },
            PACE => {
                ControlFrame::Pace { min_shake_interval_ms: r.varint_u32("min shake interval")? }
            }
            AWARD => ControlFrame::Award {
                award_id: r.varint()?,
                round_id: r.varint_u32("round id")?,
                prize: Prize::decode(&mut r)?,
            },
            AWARD_ACK => ControlFrame::AwardAck { award_id: r.varint()? },
            SHAKE => ControlFrame::Shake(Shake::decode_body(&mut r)?),
            OUTCOMES => return Outcomes::validate(payload.clone()).map(ControlFrame::Outcomes),
            GO_AWAY => {
                ControlFrame::GoAway { reconnect_after_ms: r.varint_u32("reconnect after")? }
            }
            ERROR => ControlFrame::Error {
                code: r.varint()?,
                reason: r.text("reason", MAX_REASON)?.to_owned(),
            },
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(frame)
    }

    /// An `Outcomes` frame from a non-empty slice of outcomes.
    ///
    /// # Panics
    /// If `outcomes` is empty.
    pub fn outcomes(outcomes: &[Outcome]) -> Self {
        assert!(!outcomes.is_empty(), "an outcome list holds at least one outcome");
        let mut body = BytesMut::new();
        for outcome in outcomes {
            outcome.encode(&mut body);
        }
        let body = body.freeze();
        // invariant: the body was encoded just above from valid outcomes.
        ControlFrame::Outcomes(Outcomes::validate(body).expect("freshly encoded outcomes"))
    }
}
