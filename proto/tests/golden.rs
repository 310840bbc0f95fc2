//! The hex examples in `docs/PROTOCOL.md` are golden vectors: each must be exactly what the
//! encoder writes for the message named beside it, and must decode back to that message.
//!
//! In the document a vector is a line `<!-- golden: NAME -->` followed by a fenced block of hex
//! (whitespace ignored).

use bytes::{Bytes, BytesMut};
use shake_proto::datagram::{self, Datagram};
use shake_proto::{
    AllocatorFrame, Batch, BatchEntry, Claims, ControlFrame, KeyRing, Outcome, OwedAward, Prize,
    RoundInfo, RoundPhase, Shake, Verdict, VerdictCounts, Winner,
};

enum Message {
    Control(ControlFrame),
    Allocator(AllocatorFrame),
    ShakeDatagram(Shake),
    OutcomeDatagram(Vec<Outcome>),
    Token(Claims),
}

const TOKEN_SECRET: &[u8; 32] = b"shake-golden-vector-secret-32byt";

fn round() -> RoundInfo {
    RoundInfo {
        round_id: 3,
        phase: RoundPhase::Open,
        starts_at_ms: 1_767_225_600_000,
        ends_at_ms: 1_767_225_660_000,
        start_spread_ms: 2_000,
    }
}

fn vectors() -> Vec<(&'static str, Message)> {
    use Message::*;
    let claims = Claims {
        key_id: 1,
        user_id: 1_000_001,
        device_id: 0xdead_beef,
        issued_at_s: 1_767_225_000,
        expires_at_s: 1_767_311_400,
    };
    vec![
        ("token", Token(claims)),
        (
            "control.hello",
            Control(ControlFrame::Hello {
                token: Bytes::from_static(&[0xaa; 4]),
                client_version: 1,
                capabilities: 1,
            }),
        ),
        (
            "control.welcome",
            Control(ControlFrame::Welcome {
                server_time_ms: 1_767_225_601_000,
                min_shake_interval_ms: 100,
                round: round(),
            }),
        ),
        (
            "control.round_notice",
            Control(ControlFrame::RoundNotice { round: round(), min_shake_interval_ms: 100 }),
        ),
        ("control.pace", Control(ControlFrame::Pace { min_shake_interval_ms: 500 })),
        (
            "control.award.cash",
            Control(ControlFrame::Award {
                award_id: 77,
                round_id: 3,
                prize: Prize::Cash { cents: 888 },
            }),
        ),
        (
            "control.award.gift",
            Control(ControlFrame::Award {
                award_id: 78,
                round_id: 3,
                prize: Prize::Gift { sku: "TEA-01".into() },
            }),
        ),
        ("control.award_ack", Control(ControlFrame::AwardAck { award_id: 77 })),
        (
            "control.shake",
            Control(ControlFrame::Shake(Shake {
                round_id: 3,
                seq: 1,
                client_time_ms: 1_767_225_601_234,
            })),
        ),
        (
            "control.outcomes",
            Control(ControlFrame::outcomes(&[
                Outcome { seq: 1, verdict: Verdict::NoLuck },
                Outcome { seq: 2, verdict: Verdict::SlowDown { retry_after_ms: 250 } },
            ])),
        ),
        ("control.go_away", Control(ControlFrame::GoAway { reconnect_after_ms: 1000 })),
        ("control.error", Control(ControlFrame::Error { code: 0x11, reason: "bad token".into() })),
        (
            "datagram.shake",
            ShakeDatagram(Shake { round_id: 3, seq: 300, client_time_ms: 1_767_225_601_234 }),
        ),
        (
            "datagram.outcomes",
            OutcomeDatagram(vec![
                Outcome { seq: 299, verdict: Verdict::RoundClosed },
                Outcome { seq: 300, verdict: Verdict::Forwarded },
            ]),
        ),
        (
            "alloc.edge_hello",
            Allocator(AllocatorFrame::EdgeHello {
                edge_id: 7,
                worker_id: 2,
                protocol_version: 2,
                instance_id: 0x1234_5678_9abc,
                highest_answered_seq: 41,
            }),
        ),
        ("alloc.batch", Allocator(AllocatorFrame::Batch(golden_batch()))),
        (
            "alloc.batch_result",
            Allocator(AllocatorFrame::BatchResult {
                seq: 42,
                digest: golden_batch().digest(),
                winners: vec![Winner {
                    entry_index: 1,
                    award_id: 77,
                    prize: Prize::Cash { cents: 888 },
                }],
            }),
        ),
        (
            "alloc.quota",
            Allocator(AllocatorFrame::Quota {
                round_id: 3,
                rate_per_s: 20_000,
                burst: 2_000,
                valid_until_ms: 1_767_225_605_000,
            }),
        ),
        (
            "alloc.round_state",
            Allocator(AllocatorFrame::RoundState { round: round(), min_shake_interval_ms: 100 }),
        ),
        (
            "alloc.load_report",
            Allocator(AllocatorFrame::LoadReport {
                window_ms: 1000,
                offered: 150_000,
                admitted: 20_000,
            }),
        ),
        (
            "alloc.worker_stats",
            Allocator(AllocatorFrame::WorkerStats {
                phones: 12_000,
                verdicts: VerdictCounts {
                    no_luck: 90_000,
                    slow_down: 300,
                    round_closed: 0,
                    forwarded: 20_000,
                },
            }),
        ),
        (
            "alloc.award_delivered",
            Allocator(AllocatorFrame::AwardDelivered { award_ids: vec![77, 78] }),
        ),
        ("alloc.heartbeat", Allocator(AllocatorFrame::Heartbeat { now_ms: 1_767_225_601_000 })),
        (
            "alloc.results_received",
            Allocator(AllocatorFrame::ResultsReceived { highest_answered_seq: 42 }),
        ),
        (
            "alloc.users_limited",
            Allocator(AllocatorFrame::UsersLimited {
                until_ms: 1_767_225_660_000,
                user_ids: vec![1_000_001, 37],
            }),
        ),
        (
            "alloc.awards_wanted",
            Allocator(AllocatorFrame::AwardsWanted { user_ids: vec![1_000_001, 37] }),
        ),
        (
            "alloc.awards_owed",
            Allocator(AllocatorFrame::AwardsOwed {
                user_id: 1_000_001,
                awards: vec![
                    OwedAward { award_id: 77, round_id: 3, prize: Prize::Cash { cents: 888 } },
                    OwedAward {
                        award_id: 78,
                        round_id: 3,
                        prize: Prize::Gift { sku: "TEA-01".into() },
                    },
                ],
            }),
        ),
    ]
}

/// Batch 42 of section 8's examples; its digest is in the `BatchResult` example.
fn golden_batch() -> Batch {
    Batch::new(
        42,
        3,
        1_767_225_601_000,
        &[
            BatchEntry { user_id: 1_000_001, offset_us: 15 },
            BatchEntry { user_id: 37, offset_us: 1_500 },
        ],
    )
}

fn key_ring() -> KeyRing {
    let mut ring = KeyRing::new();
    ring.insert(1, TOKEN_SECRET).unwrap();
    ring
}

fn encode(message: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    match message {
        Message::Control(frame) => frame.encode(&mut out),
        Message::Allocator(frame) => frame.encode(&mut out),
        Message::ShakeDatagram(shake) => shake.encode_datagram(&mut out),
        Message::OutcomeDatagram(list) => datagram::encode_outcomes(&mut out, list),
        Message::Token(claims) => return key_ring().mint(claims).unwrap().to_vec(),
    }
    out.to_vec()
}

fn assert_decodes_to(name: &str, bytes: &[u8], message: &Message) {
    match message {
        Message::Control(frame) => {
            let mut buf = BytesMut::from(bytes);
            assert_eq!(ControlFrame::decode(&mut buf).unwrap().as_ref(), Some(frame), "{name}");
        }
        Message::Allocator(frame) => {
            let mut buf = BytesMut::from(bytes);
            assert_eq!(AllocatorFrame::decode(&mut buf).unwrap().as_ref(), Some(frame), "{name}");
        }
        Message::ShakeDatagram(shake) => {
            assert_eq!(datagram::decode(bytes), Ok(Datagram::Shake(*shake)), "{name}")
        }
        Message::OutcomeDatagram(list) => match datagram::decode(bytes) {
            Ok(Datagram::Outcomes(o)) => assert!(o.iter().eq(list.iter().copied()), "{name}"),
            other => panic!("{name} decoded as {other:?}"),
        },
        Message::Token(claims) => {
            let now = claims.issued_at_s + 1;
            assert_eq!(key_ring().verify(bytes, now), Ok(*claims), "{name}");
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// Every `<!-- golden: NAME -->` vector in the document, with its hex decoded.
fn vectors_in_doc() -> Vec<(String, Vec<u8>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(path).expect("docs/PROTOCOL.md is readable");
    let mut found = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) =
            line.trim().strip_prefix("<!-- golden:").and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        let fence = lines.next().expect("a fenced block follows a golden marker");
        assert!(fence.starts_with("```"), "golden {name}: expected a fence, got {fence:?}");
        let mut hex = String::new();
        for body in lines.by_ref() {
            if body.starts_with("```") {
                break;
            }
            hex.extend(body.chars().filter(|c| !c.is_whitespace()));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits"))
            .collect();
        found.push((name.trim().to_owned(), bytes));
    }
    found
}

#[test]
fn every_golden_vector_in_the_doc_matches_the_codec() {
    let in_doc = vectors_in_doc();
    let mut missing = Vec::new();
    for (name, message) in vectors() {
        let encoded = encode(&message);
        match in_doc.iter().find(|(doc_name, _)| doc_name == name) {
            Some((_, doc_bytes)) => {
                assert_eq!(
                    to_hex(doc_bytes),
                    to_hex(&encoded),
                    "golden {name}: doc (left) differs from the encoder (right)"
                );
                assert_decodes_to(name, doc_bytes, &message);
            }
            None => {
                missing.push(format!("<!-- golden: {name} -->\n```text\n{}\n```", to_hex(&encoded)))
            }
        }
    }
    assert!(missing.is_empty(), "vectors missing from docs/PROTOCOL.md:\n{}", missing.join("\n"));
    let known: Vec<&str> = vectors().iter().map(|(n, _)| *n).collect();
    for (name, _) in &in_doc {
        assert!(known.contains(&name.as_str()), "doc vector {name} has no test message");
    }
}
