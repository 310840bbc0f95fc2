#!/usr/bin/env bash
# Runs one named benchmark in release mode: a readable table, then one JSON line.
# Figures also land in bench/results/<name>.json with a description of the machine.
#
#   scripts/bench.sh proto          encode/decode a 1,024-entry Batch (target: 50 M entries/s each)
#   scripts/bench.sh allocator      draw decisions/s (target 5 M) and durable awards/s (target 200 k)
#   scripts/bench.sh edge-hot-path  allocations (target 0) and time per shake through the edge's code
#   scripts/bench.sh handshake      QUIC handshakes per second for several TLS configurations
#   scripts/bench.sh ledger-stores  redb vs fjall vs SQLite group commits of 1, 100, 10,000 awards
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 64
}

name="${1:-}"
[ -n "$name" ] || usage
shift

# Pin the measured process to the last core, away from whatever else runs on core 0.
last_core=$(( $(nproc) - 1 ))
pin() { if command -v taskset >/dev/null; then taskset -c "$last_core" "$@"; else "$@"; fi; }

case "$name" in
    proto)
        cargo build --quiet --release -p shake-bench --bin shake-bench
        pin target/release/shake-bench proto "$@"
        ;;
    allocator)
        cargo build --quiet --release -p shake-bench --bin shake-bench
        pin target/release/shake-bench allocator "$@"
        ;;
    edge-hot-path)
        cargo build --quiet --release -p shake-bench --bin shake-bench
        pin target/release/shake-bench edge-hot-path "$@"
        ;;
        handshake)
        cargo build --quiet --release -p shake-bench --bin shake-bench
        target/release/shake-bench handshake "$@"
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
