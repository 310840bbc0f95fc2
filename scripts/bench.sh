#!/usr/bin/env bash
# Runs one named benchmark in release mode: a readable table, then one JSON line.
# Figures also land in bench/results/<name>.json with a description of the machine.
# proto, allocator, edge-hot-path, soak and takeover are micro-benchmarks beside their crates
# (proto/benches, allocator/benches, edge/benches); the rest run the real processes.
#
#   scripts/bench.sh proto          encode/decode a 1,024-entry Batch (target: 50 M entries/s each)
#   scripts/bench.sh allocator      draw decisions/s (5 M), durable awards/s (200 k), PostgreSQL beside fjall
#   scripts/bench.sh edge-hot-path  allocations (target 0) and time per shake through the edge's code
#   scripts/bench.sh soak           10 M batches through the allocator core: memory flat, answers compacted
#   scripts/bench.sh takeover       a new leader's read of a 5 M-award PostgreSQL ledger: the tail vs every award
#   scripts/bench.sh handshake      QUIC handshakes per second for several TLS configurations
#   scripts/bench.sh ledger-stores  redb vs fjall vs SQLite group commits of 1, 100, 10,000 awards
#   scripts/bench.sh floor          raw UDP request/reply with recvmmsg/sendmmsg: the physical floor
#   scripts/bench.sh edge           the edge vs a quinn echo, stream-per-shake and the floor (CPU/msg)
#   scripts/bench.sh memory         edge memory per idle phone at 10k, 50k, 100k phones
#   scripts/bench.sh latency        shake-to-outcome and -award percentiles, the edge's core 20/50/80% busy
#   scripts/bench.sh surge          every phone shaking at once at 2.5x the edge's capacity (root)
#   scripts/bench.sh all            every benchmark above but ledger-stores, in turn
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    # The header comment, however long it grows: every line after the shebang up to the first
    # that is not a comment.
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
    exit 64
}

name="${1:-}"
[ -n "$name" ] || usage
shift

# Pin the measured process to the last core, away from whatever else runs on core 0.
last_core=$(( $(nproc) - 1 ))
pin() { if command -v taskset >/dev/null; then taskset -c "$last_core" "$@"; else "$@"; fi; }

# A micro-benchmark is a `cargo bench` target beside the crate it measures (release profile,
# so its figures compare with the binaries'): built first, then run pinned. Its results file
# goes to bench/results like every other benchmark's.
micro() {
    local package="$1" target="$2"
    shift 2
    cargo bench --quiet --profile release -p "$package" --bench "$target" --no-run
    pin cargo bench --quiet --profile release -p "$package" --bench "$target" -- \
        --results-dir "$PWD/bench/results" "$@"
}

case "$name" in
    proto)
        micro shake-proto batch_codec "$@"
        ;;
    allocator)
        micro shake-allocator draw_and_ledger "$@"
        ;;
    edge-hot-path)
        micro shake-edge hot_path "$@"
        ;;
    soak)
        micro shake-allocator soak "$@"
        ;;
    takeover)
        micro shake-allocator takeover_read "$@"
        ;;
    handshake)
        cargo build --quiet --release -p shake-bench --bin shake-bench
        target/release/shake-bench handshake "$@"
        ;;
    floor)
        cargo build --quiet --release -p shake-bench --bin shake-bench
        target/release/shake-bench floor "$@"
        ;;
    edge | memory | latency | surge)
        # These start the real allocator and edge: build all three. They pin their own cores.
        cargo build --quiet --release -p shake-allocator -p shake-edge -p shake-bench -p shake-swarm -p shake-relay
        target/release/shake-bench "$name" "$@"
        ;;
    all)
        for bench in proto allocator edge-hot-path soak takeover floor edge handshake memory latency surge; do
            "$0" "$bench"
        done
        ;;
    ledger-stores)
        cargo build --quiet --release -p shake-bench --bin shake-bench --features store-comparison
        pin target/release/shake-bench ledger-stores "$@"
        ;;
    *)
        echo "unknown benchmark: $name" >&2
        usage
        ;;
esac
