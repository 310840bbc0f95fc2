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

say() { printf '==> %s\n' "$*" >&2; }

# Waits for a "ready" line in a log and prints the value of FIELD= from it.
ready_field() {
    local log="$1" field="$2" pid="$3"
    for _ in $(seq 1 300); do
        if line=$(grep -m1 ' ready ' "$log" 2>/dev/null); then
            tr ' ' '\n' <<<"$line" | sed -n "s/^$field=//p"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { echo "demo: process $pid died; see $log" >&2; return 1; }
        sleep 0.1
    done
    echo "demo: no ready line in $log" >&2
    return 1
}

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

cat >"$DEMO/allocator.toml" <<TOML
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
ledger_path = "$DEMO/ledger"
oversampling = 4.0
[tls]
cert = "$DEMO/certs/allocator.pem"
key = "$DEMO/certs/allocator.key"
edge_ca = "$DEMO/certs/ca.pem"
[[rounds]]
id = 1
starts_at_ms = $round1
duration_s = $ROUND_S
seed = 2026
[rounds.cash]
total_cents = 50000
envelopes = 1000
[[rounds.gifts]]
sku = "TEA-01"
name = "Tea set"
count = 50
[[rounds]]
id = 2
starts_at_ms = $round2
duration_s = $ROUND_S
seed = 2027
[rounds.cash]
total_cents = 30000
envelopes = 600
TOML

say "starting the allocator (log: $DEMO/allocator.log)"
"$BIN/shake-allocator" run --config "$DEMO/allocator.toml" >"$DEMO/allocator.out" 2>"$DEMO/allocator.log" &
alloc_pid=$!
pids+=("$alloc_pid")
alloc_addr=$(ready_field "$DEMO/allocator.out" quic "$alloc_pid")

sed -e "s#^addr = \"127.0.0.1:7400\"#addr = \"$alloc_addr\"#" \
    -e 's#^listen = "127.0.0.1:7443"#listen = "127.0.0.1:0"#' \
    -e 's#^metrics_listen = "127.0.0.1:9443"#metrics_listen = "127.0.0.1:0"#' \
        -e 's#^workers = 0#workers = 2#' \
    -e 's#^handshakes_per_source = 64 .*#handshakes_per_source = 100000  \# loopback: every phone shares one address#' \
    -e "s#target/demo/certs#$DEMO/certs#g" \
    edge/shake-edge.example.toml >"$DEMO/edge.toml"

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

peak_kib() { sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$1/status" 2>/dev/null || echo 0; }
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
