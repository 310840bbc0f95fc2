//! Properties of the phone's session whatever the edge says within the protocol and whatever
//! the app does: slow or missing answers, round notices, paces, awards never acknowledged,
//! long silences. The session never ends by itself (only `GoAway`, `Error` or a broken frame
//! end it: a live connection is never given up), it never sends a shake sooner than the last
//! interval it was told or during a slow-down, and everything it holds stays bounded.

use bytes::BytesMut;
use proptest::prelude::*;
use shake_client::session::{MAX_EVENTS, MAX_HELD_AWARDS};
use shake_client::{PhoneSession, ShakeRefusal};
use shake_proto::datagram::encode_outcomes;
use shake_proto::{ControlFrame, Outcome, Prize, RoundInfo, RoundPhase, Verdict};

const T0_MS: u64 = 1_800_000_000_000;

#[derive(Debug, Clone)]
enum Step {
    /// Time passes.
    Wait(u64),
    /// The app tries to shake.
    Shake,
    /// An outcome for one of the shakes sent (or a stale one).
    Answer { back: u64, verdict: u8, retry_ms: u32 },
    /// The edge moves the round's times.
    Notice { starts: u64, length: u64, interval: u32 },
    /// The edge paces the phone.
    Pace(u32),
    /// An award arrives (the app never acknowledges it).
    Award(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u64..120_000).prop_map(Step::Wait),
        Just(Step::Shake),
        Just(Step::Shake),
        (0u64..5, 0u8..4, 0u32..5_000).prop_map(|(back, verdict, retry_ms)| Step::Answer {
            back,
            verdict,
            retry_ms
        }),
        (0u64..600_000, 1u64..600_000, 10u32..2_000)
            .prop_map(|(starts, length, interval)| Step::Notice { starts, length, interval }),
        (10u32..5_000).prop_map(Step::Pace),
        (1u64..1_000).prop_map(Step::Award),
    ]
}

fn frame(frame: &ControlFrame) -> BytesMut {
    let mut out = BytesMut::new();
    frame.encode(&mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn a_session_within_the_protocol_never_ends_and_keeps_every_rule(
        steps in proptest::collection::vec(step(), 1..400),
    ) {
        let mut session = PhoneSession::new(bytes::Bytes::from_static(&[0u8; 16]));
        session.hello();
        let round = RoundInfo {
            round_id: 1,
            phase: RoundPhase::Open,
            starts_at_ms: T0_MS,
            ends_at_ms: T0_MS + 600_000,
            start_spread_ms: 0,
        };
        let welcome = ControlFrame::Welcome {
            server_time_ms: T0_MS,
            min_shake_interval_ms: 100,
            round,
        };
        session.on_control(T0_MS, &frame(&welcome)).unwrap();
        let mut now = T0_MS;
        let mut seq = 0u64;
        let mut last_sent: Option<u64> = None;
        let mut slow_until = 0u64;
        // The latest a slow-down may hold the phone (its retry and a quarter of jitter), and
        // the time the last refusal named, until anything that could move it arrives.
        let mut slow_most = 0u64;
        let mut named: Option<u64> = None;
        let mut out = BytesMut::new();
        for step in steps {
            match step {
                Step::Wait(ms) => now += ms,
                Step::Shake => match session.shake(now, &mut out) {
                    // Liveness: a refusal named a time, and a shake from then on is not
                    // refused as too soon again.
                    Err(ShakeRefusal::TooSoon { .. }) if named.is_some_and(|at| now >= at) => {
                        return Err(TestCaseError::fail("too soon again after the time named"));
                    }
                    Ok(sent) => {
                        named = None;
                        seq = sent;
                        let interval = u64::from(session.min_shake_interval_ms());
                        prop_assert!(last_sent.is_none_or(|at| now >= at + interval), "too soon");
                        prop_assert!(now >= slow_until, "during a slow-down");
                        last_sent = Some(now);
                        out.clear();
                    }
                    Err(ShakeRefusal::TooSoon { at_ms }) => {
                        prop_assert!(at_ms > now);
                        let interval = u64::from(session.min_shake_interval_ms());
                        let paced = last_sent.map_or(0, |at| at + interval + interval / 4 + 1);
                        prop_assert!(at_ms <= paced.max(slow_most), "held too long");
                        named = Some(at_ms);
                    }
                    Err(ShakeRefusal::NoOpenRound) => {}
                    Err(ShakeRefusal::Backlogged) => {
                        return Err(TestCaseError::fail("backlogged on the datagram path"));
                    }
                    Err(ShakeRefusal::NoSession) => {
                        return Err(TestCaseError::fail("the session ended by itself"));
                    }
                },
                Step::Answer { back, verdict, retry_ms } => {
                    named = None;
                    let verdict = match verdict {
                        0 => Verdict::NoLuck,
                        1 => Verdict::Forwarded,
                        2 => Verdict::RoundClosed,
                        _ => Verdict::SlowDown { retry_after_ms: retry_ms },
                    };
                    if let Verdict::SlowDown { retry_after_ms } = verdict {
                        slow_until = slow_until.max(now + u64::from(retry_after_ms));
                        let jittered = u64::from(retry_after_ms) * 5 / 4 + 1;
                        slow_most = slow_most.max(now + jittered);
                    }
                    let mut datagram = BytesMut::new();
                    let outcome = Outcome { seq: seq.saturating_sub(back), verdict };
                    encode_outcomes(&mut datagram, &[outcome]);
                    session.on_datagram(now, &datagram).unwrap();
                }
                Step::Notice { starts, length, interval } => {
                    named = None;
                    let round = RoundInfo {
                        starts_at_ms: T0_MS + starts,
                        ends_at_ms: T0_MS + starts + length,
                        ..round
                    };
                    let notice =
                        ControlFrame::RoundNotice { round, min_shake_interval_ms: interval };
                    session.on_control(now, &frame(&notice)).unwrap();
                }
                Step::Pace(ms) => {
                    named = None;
                    let pace = ControlFrame::Pace { min_shake_interval_ms: ms };
                    session.on_control(now, &frame(&pace)).unwrap();
                }
                Step::Award(award_id) => {
                    let award = ControlFrame::Award {
                        award_id,
                        round_id: 1,
                        prize: Prize::Cash { cents: 100 },
                    };
                    session.on_control(now, &frame(&award)).unwrap();
                }
            }
            prop_assert!(session.is_active() && session.ended().is_none());
            prop_assert!(session.held_awards().count() <= MAX_HELD_AWARDS);
        }
        let mut events = 0;
        while session.poll_event().is_some() {
            events += 1;
        }
        prop_assert!(events <= MAX_EVENTS);
    }
}
