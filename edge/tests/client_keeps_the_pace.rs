//! The client library against the edge's own admission rules (property test): a phone driven
//! by `PhoneSession`, whatever the app's shaking (bursts, long pauses, hammering), never earns
//! slow-down while the edge's pace is steady; the session holds back what the pace forbids.

use bytes::BytesMut;
use proptest::prelude::*;
use shake_client::{PhoneSession, ShakeRefusal};
use shake_edge::admission::{Admission, AdmissionSettings, Decision};
use shake_edge::bucket::Rate;
use shake_proto::datagram::{self, Datagram};
use shake_proto::{Claims, ControlFrame, KeyRing, RoundInfo, RoundPhase, Verdict};

const T0_MS: u64 = 1_800_000_000_000;

fn token(user_id: u64) -> bytes::Bytes {
    let mut ring = KeyRing::new();
    ring.insert(1, &[7u8; 32]).unwrap();
    let claims = Claims {
        key_id: 1,
        user_id,
        device_id: 1,
        issued_at_s: T0_MS / 1000,
        expires_at_s: T0_MS / 1000 + 3_600,
    };
    bytes::Bytes::copy_from_slice(&ring.mint(&claims).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn a_phone_keeping_the_pushed_pace_never_earns_slow_down(
        per_s in 1.0f64..50.0,
        burst in 1.0f64..20.0,
        allocator_interval_ms in 10u32..1_000,
        spread_ms in 0u32..2_000,
        user in 1u64..1_000_000,
        gaps_ms in proptest::collection::vec(0u64..400, 1..300),
    ) {
        let settings = AdmissionSettings {
            phone: Rate::new(per_s, burst),
            fallback: Rate::new(1e9, 1e9),
        };
        let mut admission = Admission::new(settings, 0);
        let round = RoundInfo {
            round_id: 1,
            phase: RoundPhase::Open,
            starts_at_ms: T0_MS,
            ends_at_ms: T0_MS + 3_600_000,
            start_spread_ms: spread_ms,
        };
        admission.on_round_state(round, allocator_interval_ms, T0_MS);
        let mut bucket = admission.new_phone_bucket(0);

        let mut session = PhoneSession::new(token(user));
        session.hello();
        let mut welcome = BytesMut::new();
        ControlFrame::Welcome {
            server_time_ms: T0_MS,
            min_shake_interval_ms: admission.min_interval_ms(),
            round,
        }
        .encode(&mut welcome);
        session.on_control(T0_MS, &welcome).unwrap();
        prop_assert!(session.is_active());

        let (mut at_ms, mut sent) = (0u64, 0u32);
        // The time the last refusal named, and the last shake sent (phone milliseconds).
        let (mut named, mut last_sent) = (None::<u64>, None::<u64>);
        let interval = u64::from(admission.min_interval_ms());
        let mut out = BytesMut::new();
        for gap in gaps_ms {
            at_ms += gap;
            let now = T0_MS + at_ms;
            let shaken = session.shake(now, &mut out);
            // Liveness: a refusal names a time, and a shake from that time on is sent.
            if named.is_some_and(|named| now >= named) {
                prop_assert!(shaken.is_ok(), "refused at +{at_ms} ms after the time it named: {shaken:?}");
            }
            match shaken {
                Ok(_) => {
                    (named, last_sent) = (None, Some(now));
                    let Ok(Datagram::Shake(shake)) = datagram::decode(&out.split()) else {
                        return Err(TestCaseError::fail("the session sent no shake"));
                    };
                    sent += 1;
                    let decision =
                        admission.decide(shake.round_id, &mut bucket, at_ms * 1000, T0_MS + at_ms);
                    prop_assert!(
                        !matches!(decision, Decision::Answer(Verdict::SlowDown { .. })),
                        "slow-down for shake {sent} at +{at_ms} ms"
                    );
                    prop_assert!(matches!(decision, Decision::Admit { .. }), "{decision:?}");
                }
                Err(ShakeRefusal::TooSoon { at_ms: allowed }) => {
                    prop_assert!(allowed > now);
                    // No later than the interval and its jitter (a quarter) after the last
                    // shake, or this phone's place in the round's start spread.
                    let paced = last_sent.map_or(0, |at| at + interval + interval / 4 + 1);
                    let most = paced.max(T0_MS + u64::from(spread_ms));
                    prop_assert!(allowed <= most, "held to {allowed}, past {most}");
                    named = Some(allowed);
                }
                Err(other) => return Err(TestCaseError::fail(format!("refused: {other}"))),
            }
        }
        prop_assert_eq!(session.ended(), None);
    }
}
