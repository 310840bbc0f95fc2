#!/usr/bin/env bash
# The one-command demo: builds in release mode, makes dev certificates under target/demo/,
# starts an allocator and an edge on localhost, runs a two-round phone swarm for about a
# minute, stops everything cleanly, checks the phones' awards against the ledger, and ends
# with a summary and one JSON line. Exits non-zero when an invariant fails.
#
#   scripts/demo.sh                 2,000 phones, rounds of 15 s
#   PHONES=5000 ROUND_S=30 scripts/demo.sh
#   SCENARIO=bench/scenarios/storm.toml PHONES=100000 ROUND_S=150 SHAKE_RATE=0.02 \
#     CONNECT_RATE=350 scripts/demo.sh        (capacity: no churn, a ramp the handshakes keep up with)
#
# For tests: SHAKE_BIN_DIR=DIR uses binaries already built there (no build step),
# SHAKE_DEMO_DIR=DIR puts the run's files there, LEAD_S=N waits N s before round 1.
set -euo pipefail
cd "$(dirname "$0")/.."

PHONES="${PHONES:-2000}"
ROUND_S="${ROUND_S:-15}"
LEAD_S="${LEAD_S:-8}"
SHAKE_RATE="${SHAKE_RATE:-2}"
CONNECT_RATE="${CONNECT_RATE:-1000}"
SCENARIO="${SCENARIO:-bench/scenarios/demo.toml}"
DEMO="${SHAKE_DEMO_DIR:-target/demo}"
BIN="${SHAKE_BIN_DIR:-target/release}"
pids=()

cleanup() {
    for pid in "${pids[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT TERM

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

if [ -z "${SHAKE_BIN_DIR:-}" ]; then
    say "building (release)"
    cargo build --release --quiet -p shake-allocator -p shake-edge -p shake-bench
fi

rm -rf "$DEMO"
mkdir -p "$DEMO"
say "dev certificates in $DEMO/certs"
"$BIN/shake-allocator" dev-certs "$DEMO/certs" --edges 1 >/dev/null

now_ms=$(( $(date +%s%N) / 1000000 ))
round1=$(( now_ms + LEAD_S * 1000 ))              # after the connect ramp
round2=$(( round1 + ROUND_S * 1000 + 5000 ))      # a short break between rounds
run_s=$(( (round2 + ROUND_S * 1000 - now_ms) / 1000 + 3 ))

write_allocator_config "$DEMO/allocator.toml" "$DEMO" 127.0.0.1:0 "$round1" "$ROUND_S" "$round2"

say "starting the allocator (log: $DEMO/allocator.log)"
"$BIN/shake-allocator" run --config "$DEMO/allocator.toml" >"$DEMO/allocator.out" 2>"$DEMO/allocator.log" &
alloc_pid=$!
pids+=("$alloc_pid")
alloc_addr=$(ready_field "$DEMO/allocator.out" quic "$alloc_pid")

write_edge_config "$DEMO/edge.toml" "$DEMO" 1 "$alloc_addr" 2 "$(phones_per_source "$PHONES" "$SCENARIO")"

say "starting the edge (log: $DEMO/edge.log)"
"$BIN/shake-edge" run --config "$DEMO/edge.toml" >"$DEMO/edge.out" 2>"$DEMO/edge.log" &
edge_pid=$!
pids+=("$edge_pid")
edge_addr=$(ready_field "$DEMO/edge.out" addr "$edge_pid")

say "swarm: $PHONES phones, two rounds of ${ROUND_S}s, about ${run_s}s"
"$BIN/shake-swarm" run --scenario "$SCENARIO" --phones "$PHONES" \
        --edge "$edge_addr" --ca "$DEMO/certs/ca.pem" --duration "$run_s" \
    --shake-rate "$SHAKE_RATE" --connect-rate "$CONNECT_RATE" \
        --json "$DEMO/swarm.json" --timeseries "$DEMO/timeseries.jsonl" --plot "$DEMO/run.svg" \
    >"$DEMO/swarm.out"
sed '$d' "$DEMO/swarm.out" >&2

edge_kib=$(peak_kib "$edge_pid")
alloc_kib=$(peak_kib "$alloc_pid")
say "peak memory: edge ${edge_kib} KiB ($(( edge_kib / PHONES )) KiB per phone), allocator ${alloc_kib} KiB"
say "stopping the edge and the allocator (drain)"
kill -TERM "$edge_pid"
wait "$edge_pid" || true
kill -TERM "$alloc_pid"
wait "$alloc_pid" || true
pids=()

"$BIN/shake-allocator" export --config "$DEMO/allocator.toml" >"$DEMO/awards.jsonl" 2>>"$DEMO/allocator.log"
say "checking the phones' awards against the ledger"
"$BIN/shake-swarm" verify --report "$DEMO/swarm.json" --ledger "$DEMO/awards.jsonl" \
    --allocator-config "$DEMO/allocator.toml"
