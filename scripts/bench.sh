#!/usr/bin/env bash
# Runs one named benchmark in release mode: a readable table, then one JSON line.
# Figures also land in bench/results/<name>.json with a description of the machine.
#
#   scripts/bench.sh proto        encode/decode a 1,024-entry Batch (target: 50 M entries/s each)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
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
    *)
        echo "unknown benchmark: $name" >&2
        usage
        ;;
esac
