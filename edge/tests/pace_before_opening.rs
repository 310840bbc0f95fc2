//! An edge that knows what a core of its machine answers (`[overload] shakes_per_core_s`)
//! paces its phones before a round opens: a few seconds ahead, each worker tells every phone
//! it holds a `RoundNotice` with the interval at which they load it to 80% of that capacity,
//! and a start spread as long, so that the opening's crowd arrives at the rate the worker
//! answers. Without the figure, phones hear nothing before the opening.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shake_proto::ControlFrame;
use shake_testkit::phone::Phone;
use shake_testkit::tokens::token;
use shake_testkit::world::{World, WorldSettings};

const PHONES: u64 = 6;
/// One shake a second per core: a worker holding `n` phones paces them to 80% of it at
/// `n * 1250` ms, `n * 1500` with the opening's headroom.
const KNOWN: &str = "\n[overload]\nshakes_per_core_s = 1.0\n";
const PER_PHONE_MS: u32 = 1_500;
/// The workers set the pace 3 s before the opening (`OPENING_LEAD_US`): the phones are all
/// connected before that.
const OPENS_IN_MS: u64 = 8_000;
const LEAD_MS: u64 = 3_000;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

async fn phones(world: &World) -> Vec<Phone> {
    let mut phones = Vec::new();
    for user in 0..PHONES {
        let mut phone = Phone::connect(world).await;
        match phone.hello(token(40_000 + user, 3_600)).await {
            Ok(ControlFrame::Welcome { min_shake_interval_ms, round, .. }) => {
                assert!(min_shake_interval_ms < PER_PHONE_MS, "paced on arrival: {round:?}");
                phones.push(phone);
            }
            other => panic!("phone {user}: expected Welcome, got {other:?}"),
        }
    }
    world.wait_for_metric("shake_edge_phones", PHONES as f64).await;
    let opens_at_ms = world.scratch.round_start_ms();
    assert!(now_ms() + LEAD_MS < opens_at_ms, "the phones connected too slowly for this test");
    phones
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_capacity_paces_and_spreads_the_phones_before_the_opening() {
    let settings =
        WorldSettings { edge_limits: KNOWN, round_opens_in_ms: OPENS_IN_MS, ..Default::default() };
    let world = World::start(settings).await;
    let opens_at_ms = world.scratch.round_start_ms();
    let mut phones = phones(&world).await;
    // Each phone hears its worker's pace before the opening; a worker's pace counts its own
    // phones, so the phones told `n * 1500` ms are `n` (or, both workers holding the same
    // number, `2n`).
    let mut told = Vec::new();
    for (i, phone) in phones.iter_mut().enumerate() {
        match phone.next_frame().await {
            Ok(ControlFrame::RoundNotice { round, min_shake_interval_ms }) => {
                let heard_at_ms = now_ms();
                assert!(
                    heard_at_ms < opens_at_ms,
                    "phone {i} heard it {heard_at_ms} >= {opens_at_ms}"
                );
                assert_eq!(round.starts_at_ms, opens_at_ms, "phone {i}");
                assert_eq!(min_shake_interval_ms % PER_PHONE_MS, 0, "phone {i}");
                assert_eq!(round.start_spread_ms, min_shake_interval_ms, "phone {i}: spread");
                told.push(min_shake_interval_ms / PER_PHONE_MS);
            }
            other => panic!("phone {i}: expected a round notice before the opening, got {other:?}"),
        }
    }
    let workers_told: f64 = told.iter().map(|&n| 1.0 / f64::from(n)).sum();
    assert!(
        (workers_told - 1.0).abs() < 1e-9 || (workers_told - 2.0).abs() < 1e-9,
        "phones per worker as told: {told:?}"
    );
    // A phone that arrives now hears the pace with its Welcome.
    let mut late = Phone::connect(&world).await;
    match late.hello(token(40_100, 3_600)).await {
        Ok(ControlFrame::Welcome { min_shake_interval_ms, round, .. }) => {
            assert!(min_shake_interval_ms >= PER_PHONE_MS, "{min_shake_interval_ms}");
            assert_eq!(round.start_spread_ms, min_shake_interval_ms);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_known_capacity_phones_hear_nothing_before_the_opening() {
    let settings = WorldSettings { round_opens_in_ms: OPENS_IN_MS, ..Default::default() };
    let world = World::start(settings).await;
    let opens_at_ms = world.scratch.round_start_ms();
    let mut phones = phones(&world).await;
    while now_ms() < opens_at_ms + 200 {
        let left = Duration::from_millis((opens_at_ms + 200).saturating_sub(now_ms()));
        match tokio::time::timeout(left, phones[0].next_frame()).await {
            Err(_) => break,
            Ok(Err(timeout)) if timeout == "timeout" => continue,
            Ok(heard) => panic!("a phone was told something before the opening: {heard:?}"),
        }
    }
}
