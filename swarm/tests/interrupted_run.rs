//! An operator's Ctrl-C ends a swarm run with its report: written (`--json`) and printed,
//! marked interrupted, with exit status 130. Before, SIGINT's default action ended the
//! process, and the minutes of load it had run left nothing behind.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shake_testkit::processes::{self, bin};
use shake_testkit::scratch::Scratch;
use shake_testkit::servers::{Allocator, Edge};

#[test]
fn an_interrupted_run_writes_and_prints_its_report() {
    let scratch = Scratch::new("swarm-interrupted");
    let allocator =
        Allocator::start(&scratch.config("[rounds.cash]\ntotal_cents = 1000\nenvelopes = 100\n"));
    let mut edge = Edge::command(&scratch.edge_config(allocator.quic, ""));
    edge.stderr(Stdio::null());
    let edge = Edge::spawn(edge).unwrap();
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    // Both drivers (the loop's phones are threads joined at the end, quinn's are tasks), and
    // a terminal's hang-up as well as Ctrl-C. The quinn phones connect 5 a second, so the
    // signal comes during the ramp: 40 phones in 8 s.
    for (driver, scenario, signal, ramp) in
        [("loop", "loop.toml", "INT", "1000"), ("quinn", "demo.toml", "HUP", "5")]
    {
        let report = scratch.dir.join(format!("report-{driver}.json"));
        let mut swarm = Command::new(bin("shake-swarm"))
            .arg("run")
            .arg("--scenario")
            .arg(scenarios.join(scenario))
            .args(["--phones", "40", "--duration", "300", "--driver", driver])
            .args(["--connect-rate", ramp])
            .arg("--edge")
            .arg(edge.addr.to_string())
            .arg("--ca")
            .arg(scratch.ca())
            .arg("--json")
            .arg(&report)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        processes::wait_for_handlers(swarm.id(), &[1, 2, 15]);
        std::thread::sleep(Duration::from_secs(3));
        let interrupted_at = Instant::now();
        processes::signal(swarm.id(), signal);
        let status = processes::exit_within(&mut swarm, Duration::from_secs(20), "the swarm");
        let mut stdout = String::new();
        swarm.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        let stopped_in = interrupted_at.elapsed();
        assert_eq!(status.code(), Some(130), "{driver}, SIG{signal}: {status:?}\n{stdout}");
        assert!(stopped_in < Duration::from_secs(10), "{driver}: stopped {stopped_in:?} after");

        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(written["interrupted"], true, "{driver}");
        assert!(written["shakes"].as_u64().unwrap() > 0, "{driver}: no shake sent");
        let ran = written["duration_s"].as_f64().unwrap();
        assert!((2.0..30.0).contains(&ran), "{driver}: ran {ran} s");
        assert!(stdout.contains("INTERRUPTED"), "{driver}: {stdout}");
        // Only the phones started: at most 3 s of a 5-a-second ramp (the loop's at once).
        let phones = written["phones"].as_u64().unwrap();
        let expected = if driver == "quinn" { 1..=25 } else { 40..=40 };
        assert!(expected.contains(&phones), "{driver}: {phones} phones in the report");
        let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(last["interrupted"], true, "{driver}: {stdout}");
    }
}
