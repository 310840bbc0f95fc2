//! What an operator relies on beyond the protocol: logs as JSON lines when asked
//! (`SHAKE_LOG_FORMAT=json`), the `build_info` metric naming the version and revision, and
//! `start_time_seconds` for the restart alert.

use std::fs::File;

use shake_testkit::metrics::scrape;
use shake_testkit::scratch::{ALLOCATOR_SOCKET_BUFFER, Scratch};
use shake_testkit::servers::Allocator;

#[test]
fn logs_are_json_lines_when_asked_and_build_info_names_the_build() {
    let scratch = Scratch::new("operability");
    let config = scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 10\n");
    let log = scratch.dir.join("allocator.log");
    let mut command = Allocator::command(&config);
    command
        .env("SHAKE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(File::create(&log).unwrap());
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let mut alloc = Allocator::spawn(command).unwrap();
    let text = scrape(alloc.metrics);
    // The restart alert's `changes()` reads when the process started: this one, not a
    // constant.
    let started = shake_ops::http::metric_sum(&text, "shake_allocator_start_time_seconds");
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!(
        (before.as_secs_f64() - 1.0..=after.as_secs_f64()).contains(&started),
        "started {started}, spawned between {before:?} and {after:?}"
    );
    let info = text
        .lines()
        .find(|l| l.starts_with("shake_allocator_build_info{"))
        .expect("a build_info sample");
    assert!(info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{info}");
    assert!(info.contains("revision=\"") && info.ends_with(" 1"), "{info}");
    // A fjall allocator leads its own ledger: the fleet's "no allocator leads" alert must
    // not page on it.
    assert_eq!(shake_ops::http::metric_sum(&text, "shake_allocator_leader_epoch "), 1.0);

    assert!(alloc.process.terminate().success());
    let logs = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= 2, "some logs: {lines:?}");
    for line in &lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(entry["level"].is_string() && entry["timestamp"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("allocator listening") || l.contains("serving edges")));
}

/// The QUIC socket takes the buffers the configuration asks for (the kernel's cap, with a
/// warning, when it grants less), shown in `shake_allocator_socket_buffer_bytes`; and what the
/// kernel drops on it while the allocator cannot read (here: stopped) shows in
/// `shake_allocator_kernel_drops_total`.
#[test]
fn the_quic_socket_is_buffered_as_asked_and_what_overflows_it_is_counted() {
    let cap_of = |name: &str| -> usize {
        let path = format!("/proc/sys/net/core/{name}");
        std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
    };
    let cap = cap_of("rmem_max").min(cap_of("wmem_max"));
    let asked: usize = 1 << 29;
    let scratch = Scratch::new("socket-buffer");
    let config = scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 10\n");
    let text = std::fs::read_to_string(&config).unwrap();
    let usual = format!("socket_buffer_bytes = {ALLOCATOR_SOCKET_BUFFER}\n");
    assert!(text.contains(&usual), "{text}");
    std::fs::write(&config, text.replace(&usual, &format!("socket_buffer_bytes = {asked}\n")))
        .unwrap();
    let log = scratch.dir.join("allocator.log");
    let mut command = Allocator::command(&config);
    command.env("RUST_LOG", "warn").stderr(File::create(&log).unwrap());
    let mut alloc = Allocator::spawn(command).unwrap();
    let drops = |alloc: &Allocator| {
        shake_ops::http::metric_sum(&scrape(alloc.metrics), "shake_allocator_kernel_drops_total")
    };
    assert_eq!(drops(&alloc), 0.0);
    let buffer = "shake_allocator_socket_buffer_bytes ";
    let granted = shake_ops::http::metric_sum(&scrape(alloc.metrics), buffer) as usize;
    assert_eq!(granted, cap.min(asked), "asked {asked} with a cap of {cap}");

    alloc.process.signal("STOP");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Four times the buffer's bytes: the kernel charges each datagram about twice its size.
    let sent = 4 * cap.min(asked) / 1_200 + 1_000;
    for _ in 0..sent {
        sender.send_to(&[0u8; 1_200], alloc.quic).unwrap();
    }
    alloc.process.signal("CONT");
    let dropped = drops(&alloc) as usize;
    assert!(dropped > 0 && dropped < sent, "{dropped} of {sent} counted as dropped");
    // The buffer's bytes, at most a few KiB of the kernel's accounting a datagram.
    let kept = sent - dropped;
    assert!(kept >= granted / 4_096, "{kept} kept: the buffer was not {granted} bytes");

    assert!(alloc.process.terminate().success());
    let logs = std::fs::read_to_string(&log).unwrap();
    let warned = logs.contains("kernel granted smaller UDP buffers")
        && logs.contains(&format!("granted={cap}"));
    assert_eq!(warned, cap < asked, "warned of a short grant: {warned}; log:\n{logs}");
}
