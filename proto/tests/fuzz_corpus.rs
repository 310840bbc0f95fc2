//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same property checks
//! the cargo-fuzz targets run, so CI covers every interesting input on stable.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("readable corpus entry").path();
        let data = std::fs::read(&path).expect("readable corpus file");
        check(&data);
        replayed += 1;
    }
    assert!(replayed > 0, "corpus {target} is empty");
}

#[test]
fn control_stream_corpus() {
    replay("control_stream", shake_proto::fuzz_checks::control_stream);
}

#[test]
fn allocator_stream_corpus() {
    replay("allocator_stream", shake_proto::fuzz_checks::allocator_stream);
}

#[test]
fn datagram_corpus() {
    replay("datagram", shake_proto::fuzz_checks::datagram);
}

#[test]
fn token_corpus() {
    replay("token", shake_proto::fuzz_checks::token);
}
