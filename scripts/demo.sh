#!/usr/bin/env bash
# The one-command demo: builds in release mode, makes dev certificates under target/demo/,
# starts an allocator and an edge on localhost, runs a two-round phone swarm for about a
# minute, stops everything cleanly, checks the phones' awards against the ledger, and ends
# with a summary and one JSON line. Exits non-zero when an invariant fails.
#
#   scripts/demo.sh                 2,000 phones, rounds of 15 s
#   PHONES=5000 ROUND_S=30 scripts/demo.sh
#   SCENARIO=swarm/scenarios/loop.toml PHONES=100000 ROUND_S=150 SHAKE_RATE=0.02 \
#     CONNECT_RATE=350 scripts/demo.sh        (capacity: a ramp the handshakes keep up with;
#                                   README "Capacity" says why not quinn phones)
#   SCENARIO=swarm/scenarios/loop.toml scripts/demo.sh   the phones on shake-loop event loops
#                                   (honest ones, no task per phone)
#   SHAKES_PER_CORE_S=0.0 scripts/demo.sh   the edge not told its capacity (default 10000.0,
#                                   about the most the demo's edge measured of itself on a
#                                   2-core VM): it meets the first opening by reacting, not
#                                   pacing ahead
#
#   LEDGER=postgres scripts/demo.sh    the ledger on PostgreSQL: a primary and a synchronous
#                                   standby started here on free loopback ports (as the postgres
#                                   user), or the database at PG_URL when given
#   SHOW=live scripts/demo.sh       a show driven by commands: both rounds armed for later, then
#                                   opened, paused, topped up, resumed, extended and closed, and a
#                                   round added, through `shake-allocator round` while the swarm
#                                   runs (the JSON line adds commands_applied)
#   SCREENSHOT=1 SHOW=live scripts/demo.sh    also photographs the control room's dashboard
#                                   mid-show (target/demo/dashboard.png; headless chromium,
#                                   installed by scripts/browser.sh with apt-get when missing)
#
# The JSON line adds awards_redelivered: awards sent again to a phone's next session because
# the phone had left before acknowledging them.
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
SCENARIO="${SCENARIO:-swarm/scenarios/demo.toml}"
SHAKES_PER_CORE_S="${SHAKES_PER_CORE_S:-10000.0}"
LEDGER="${LEDGER:-fjall}"
SHOW="${SHOW:-scheduled}"
case "$LEDGER" in fjall | postgres) ;; *) echo "demo: LEDGER is fjall or postgres" >&2; exit 64 ;; esac
case "$SHOW" in scheduled | live) ;; *) echo "demo: SHOW is scheduled or live" >&2; exit 64 ;; esac
SCREENSHOT="${SCREENSHOT:-0}"
if [ "$SCREENSHOT" = 1 ] && [ "$SHOW" != live ]; then
    echo "demo: SCREENSHOT=1 needs SHOW=live (the dashboard is on the admin listener)" >&2
    exit 64
fi
DEMO="${SHAKE_DEMO_DIR:-target/demo}"
BIN="${SHAKE_BIN_DIR:-target/release}"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

pids=()

pg_dirs=()
cleanup() {
    stop_processes "${pids[@]}"
    for dir in "${pg_dirs[@]}"; do scripts/pg-cluster.sh stop "$dir" immediate 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT TERM


if [ -z "${SHAKE_BIN_DIR:-}" ]; then
    say "building (release)"
    cargo build --release --quiet -p shake-allocator -p shake-edge -p shake-bench -p shake-swarm -p shake-relay
fi

rm -rf "$DEMO"
mkdir -p "$DEMO"
say "dev certificates in $DEMO/certs"
"$BIN/shake-allocator" dev-certs "$DEMO/certs" --edges 1 >/dev/null

if [ "$LEDGER" = postgres ] && [ -z "${PG_URL:-}" ]; then
    say "PostgreSQL: a primary and a synchronous standby in $DEMO/pg-*"
    pg_port=$(free_port)
    s1_port=$(free_port)
    pg_dirs+=("$DEMO/pg-primary" "$DEMO/pg-standby")
    scripts/pg-cluster.sh primary "$DEMO/pg-primary" "$pg_port" s1
    scripts/pg-cluster.sh standby "$DEMO/pg-standby" "$s1_port" "$pg_port" s1
    PG_URL=$(scripts/pg-cluster.sh url "$pg_port" "$s1_port")
fi

now_ms=$(( $(date +%s%N) / 1000000 ))
round1=$(( now_ms + LEAD_S * 1000 ))              # after the connect ramp
round2=$(( round1 + ROUND_S * 1000 + 5000 ))      # a short break between rounds
run_s=$(( (round2 + ROUND_S * 1000 - now_ms) / 1000 + 3 ))
if [ "$SHOW" = live ]; then
    # Armed for an hour from now: the commands open them, the schedule is only the fallback.
    round1=$(( now_ms + 3600 * 1000 ))
    round2=$(( round1 + 1800 * 1000 ))
    run_s=$(( LEAD_S + 2 * ROUND_S + 19 ))
fi

write_allocator_config "$DEMO/allocator.toml" "$DEMO" 127.0.0.1:0 "$round1" "$ROUND_S" "$round2"
[ "$LEDGER" = fjall ] || use_postgres_ledger "$DEMO/allocator.toml" "$PG_URL" demo
[ "$SHOW" = scheduled ] || use_admin_api "$DEMO/allocator.toml" "$DEMO/admin.token"

say "starting the allocator (log: $DEMO/allocator.log)"
"$BIN/shake-allocator" run --config "$DEMO/allocator.toml" >"$DEMO/allocator.out" 2>"$DEMO/allocator.log" &
alloc_pid=$!
pids+=("$alloc_pid")
alloc_addr=$(ready_field "$DEMO/allocator.out" quic "$alloc_pid")
admin_addr=$(ready_field "$DEMO/allocator.out" admin "$alloc_pid")

write_edge_config "$DEMO/edge.toml" "$DEMO" 1 "$alloc_addr" 2 "$(phones_per_source "$PHONES" "$SCENARIO")"
# What one busy core of the edge answers a second, as an operator configures it: with it the
# edge paces its phones before the first opening too (unknown, it learns it in that opening).
sed -i "s#^shakes_per_core_s = 0.0 #shakes_per_core_s = $SHAKES_PER_CORE_S #" "$DEMO/edge.toml"
grep -q "^shakes_per_core_s = $SHAKES_PER_CORE_S " "$DEMO/edge.toml" ||
    { echo "demo: could not set shakes_per_core_s in $DEMO/edge.toml" >&2; exit 1; }

say "starting the edge (log: $DEMO/edge.log)"
"$BIN/shake-edge" run --config "$DEMO/edge.toml" >"$DEMO/edge.out" 2>"$DEMO/edge.log" &
edge_pid=$!
pids+=("$edge_pid")
edge_addr=$(ready_field "$DEMO/edge.out" addr "$edge_pid")

say "swarm: $PHONES phones, two rounds of ${ROUND_S}s, about ${run_s}s ($SHOW show, $LEDGER ledger)"
"$BIN/shake-swarm" run --scenario "$SCENARIO" --phones "$PHONES" \
        --edge "$edge_addr" --ca "$DEMO/certs/ca.pem" --duration "$run_s" \
    --shake-rate "$SHAKE_RATE" --connect-rate "$CONNECT_RATE" \
        --json "$DEMO/swarm.json" --timeseries "$DEMO/timeseries.jsonl" --plot "$DEMO/run.svg" \
    >"$DEMO/swarm.out" &
swarm_pid=$!
pids+=("$swarm_pid")

# The live show: the director's commands, through the CLI, while the phones shake.
director() {
    say "director: shake-allocator round $*"
    "$BIN/shake-allocator" round "$@" --admin "$admin_addr" --token-file "$DEMO/admin.token" \
        --as director >>"$DEMO/commands.out" || { echo "demo: round $* was refused" >&2; exit 1; }
}
if [ "$SHOW" = live ]; then
    round1_left=$(( ROUND_S - ROUND_S / 3 ))
    cat >"$DEMO/round-3.toml" <<TOML
# A round added during the show: an encore, armed for later (opened by "go" or at this time).
id = 3
starts_at_ms = $(( round2 + 3600 * 1000 ))
duration_s = $ROUND_S
seed = 33
[cash]
total_cents = 50000
envelopes = 200
[[gifts]]
sku = "ENCORE-T"
name = "Encore T-shirt"
count = 50
TOML
    sleep "$LEAD_S"
    director go 1
    sleep $(( ROUND_S / 3 ))
    director pause 1                  # the host holds the moment
    sleep 2
    director top-up 1 --cash-cents 20000 --envelopes 100 --gift HEADPHONES=10
    director resume 1                 # for the time it had left
    sleep $(( round1_left / 2 ))
    director extend 1 --by-s 3
    sleep $(( round1_left - round1_left / 2 + 3 + 3 ))
    director go 2
    sleep $(( ROUND_S / 4 ))
    director interval 2 --ms 250
    director add "$DEMO/round-3.toml"
    if [ "$SCREENSHOT" = 1 ]; then
        say "photographing the dashboard mid-show ($DEMO/dashboard.png)"
        "$BIN/shake-allocator" screenshot --admin "$admin_addr" --token-file "$DEMO/admin.token" \
            --out "$DEMO/dashboard.png" 2>>"$DEMO/screenshot.log" &
        shot_pid=$!
    fi
    sleep $(( ROUND_S / 2 ))
    director close 2                  # early: three quarters in
fi
wait "$swarm_pid"
if [ -n "${shot_pid:-}" ]; then
    wait "$shot_pid" || echo "demo: the screenshot failed (see $DEMO/screenshot.log)" >&2
fi
sed '$d' "$DEMO/swarm.out" >&2
commands_applied=0
verify_commands=()
if [ "$SHOW" = live ]; then
    "$BIN/shake-allocator" round audit --admin "$admin_addr" --token-file "$DEMO/admin.token" \
        >"$DEMO/audit.jsonl"
    commands_applied=$(grep -c '"action"' "$DEMO/audit.jsonl" || true)
    verify_commands=(--commands "$DEMO/audit.jsonl")
fi
edge_metrics=$(ready_field "$DEMO/edge.out" metrics "$edge_pid")
failed=()
if ! awards_redelivered=$(metric_sum "$edge_metrics" 'shake_edge_awards_total{delivery="owed_written"'); then
    failed+=("the edge's metrics could not be read (see $DEMO/edge.log)")
    awards_redelivered=null
fi

edge_kib=$(peak_kib "$edge_pid")
alloc_kib=$(peak_kib "$alloc_pid")
say "peak memory: edge ${edge_kib} KiB ($(( edge_kib / PHONES )) KiB per phone), allocator ${alloc_kib} KiB"
say "stopping the edge and the allocator (drain)"
# A drain ends with status 0: anything else (a panic, a failed last commit) is a failure of
# the run, whatever the ledger shows after it.
kill -TERM "$edge_pid"
wait "$edge_pid" || failed+=("the edge's drain ended with status $? (see $DEMO/edge.log)")
kill -TERM "$alloc_pid"
wait "$alloc_pid" || failed+=("the allocator's drain ended with status $? (see $DEMO/allocator.log)")
pids=()

"$BIN/shake-allocator" export --config "$DEMO/allocator.toml" >"$DEMO/awards.jsonl" 2>>"$DEMO/allocator.log"
say "checking the phones' awards against the ledger"
"$BIN/shake-swarm" verify --report "$DEMO/swarm.json" --ledger "$DEMO/awards.jsonl" \
    --allocator-config "$DEMO/allocator.toml" "${verify_commands[@]}" >"$DEMO/verify.out" \
    && verified=0 || verified=$?
sed '$d' "$DEMO/verify.out"
if [ "$SHOW" = live ]; then
    printf 'commands applied: %s (go, pause, top-up, resume, extend, go, interval, add, close expected)\n' \
        "$commands_applied"
fi
printf 'awards sent again to a next session: %s\n' "$awards_redelivered"
tail -n1 "$DEMO/verify.out" |
    sed "s/}\$/,\"ledger\":\"$LEDGER\",\"show\":\"$SHOW\",\"commands_applied\":$commands_applied,\"awards_redelivered\":$awards_redelivered}/"
if [ "$SHOW" = live ] && [ "$commands_applied" != 9 ]; then
    failed+=("$commands_applied commands applied, 9 expected")
fi
for why in "${failed[@]}"; do echo "demo: $why" >&2; done
[ "${#failed[@]}" = 0 ] || exit 1
exit "$verified"
