//! The swarm's phones on `shake-loop` (`shake_swarm::loop_phones`) against the benchmarks'
//! loop echo server, in process: every phone connects, every message is answered and timed
//! once, and an emulated path delays every answer by its round trip.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use shake_bench::quinn_echo::{self, EchoMode, EchoServer};
use shake_bench::window::LoadSide;
use shake_swarm::loop_phones::{LoadCounters, LoopLoad, LoopLoadPlan, LoopLoadReport, Speech};

/// Echo phones against the loop's echo server, in process, until `answers` came back.
fn echo_run(path_rtt: Duration, answers: u64) -> (u64, Arc<LoadCounters>, LoopLoadReport) {
    let dir = std::env::temp_dir().join(format!(
        "shake-loop-load-{}-{}",
        std::process::id(),
        path_rtt.as_millis()
    ));
    shake_allocator::dev_certs::generate(&dir, &[1]).unwrap();
    let chain = shake_ops::tls::load_certs(&dir.join("allocator.pem")).unwrap();
    let key = shake_ops::tls::load_key(&dir.join("allocator.key")).unwrap();
    let mode = EchoMode::LoopDatagram;
    let server =
        EchoServer::start(mode, quinn_echo::server_config(mode, chain, key).unwrap(), 0).unwrap();
    let client = shake_swarm::phone_client_config(&dir.join("ca.pem"), 64).unwrap();
    let plan = LoopLoadPlan {
        phones: 20,
        rate_per_phone: 20.0,
        connect_rate: 0.0,
        threads: 2,
        jitter: 0.0,
        batch_delay: Duration::ZERO,
        series_origin_unix_ms: 0,
        path_rtt,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let load =
        LoopLoad::start(server.addr, "localhost", &client, &Speech::Echo, plan, None, deadline)
            .unwrap();
    while load.counters.answered.load(Ordering::Relaxed) < answers && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let connected = load.counters.connected.load(Ordering::Relaxed);
    let counters = load.counters.clone();
    let report = load.finish().unwrap();
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
    (connected, counters, report)
}

/// Phones on the loop against the loop's echo server, in process: every phone connects,
/// every message sent is answered and timed, the counters agree with the report.
#[test]
fn echo_phones_connect_send_and_time_every_answer() {
    let (connected, counters, report) = echo_run(Duration::ZERO, 400);
    assert_eq!(connected, 20, "every phone connected");
    let answered = counters.answered.load(Ordering::Relaxed);
    assert!(answered >= 400, "answered {answered}");
    assert_eq!(report.outcome_us.len(), answered, "every answer timed");
    let by_second: u64 = report.outcome_by_s.iter().map(Histogram::len).sum();
    assert_eq!(by_second, answered, "every answer in the second it came");
    assert!(counters.sent.load(Ordering::Relaxed) >= answered);
    assert_eq!(report.lost, 0);
    // Each message is at least one datagram each way (plus handshakes and ACKs).
    assert!(report.driver.datagrams_out >= answered, "{:?}", report.driver);
    assert!(report.driver.datagrams_in >= answered, "{:?}", report.driver);
    // The live counters trail the final count by at most the last turn's closes.
    let live = LoadSide::of(&counters).datagrams_out;
    assert!(live > 0 && live <= report.driver.datagrams_out, "{live}");
}

#[test]
fn an_emulated_path_delays_every_answer_by_its_round_trip() {
    let rtt = Duration::from_millis(30);
    let (connected, counters, report) = echo_run(rtt, 200);
    assert_eq!(connected, 20, "every phone connected through the delayed path");
    assert!(counters.answered.load(Ordering::Relaxed) >= 200);
    let fastest = Duration::from_micros(report.outcome_uncorrected_us.min());
    assert!(fastest >= rtt, "an answer came back in {fastest:?}, under the path's {rtt:?}");
    assert_eq!(report.driver.delay_drops, 0);
}
