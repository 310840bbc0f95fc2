# shellcheck shell=bash
# Shared by demo.sh and chaos.sh: configuring and starting the real binaries on loopback, and
# reading their state. Source it; it expects BIN (the binaries' directory) to be set.

say() { printf '==> %s\n' "$*" >&2; }

# The PostgreSQL servers a script starts (scripts/pg-cluster.sh) stop once the script is gone,
# even when it is killed with SIGKILL and its cleanup never runs.
export PG_OWNER_PID=$$

# Waits for a "ready" line in a log and prints the value of FIELD= from it.
ready_field() {
    local log="$1" field="$2" pid="$3"
    for _ in $(seq 1 300); do
        if line=$(grep -m1 ' ready ' "$log" 2>/dev/null); then
            tr ' ' '\n' <<<"$line" | sed -n "s/^$field=//p"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { echo "process $pid died; see $log" >&2; return 1; }
        sleep 0.1
    done
    echo "no ready line in $log" >&2
    return 1
}

# Writes an allocator configuration: FILE DIR LISTEN ROUND1_MS ROUND_S [ROUND2_MS]
# (dev certificates in DIR/certs, the ledger in DIR/ledger; a second round when ROUND2_MS is set).
write_allocator_config() {
    local file="$1" dir="$2" listen="$3" round1="$4" round_s="$5" round2="${6:-}"
    cat >"$file" <<TOML
listen = "$listen"
metrics_listen = "127.0.0.1:0"
ledger_path = "$dir/ledger"
oversampling = 4.0
[tls]
cert = "$dir/certs/allocator.pem"
key = "$dir/certs/allocator.key"
edge_ca = "$dir/certs/ca.pem"
[[rounds]]
id = 1
starts_at_ms = $round1
duration_s = $round_s
seed = 2026
[rounds.cash]
total_cents = 50000
envelopes = 1000
[[rounds.gifts]]
sku = "TEA-01"
name = "Tea set"
count = 50
TOML
    if [ -n "$round2" ]; then
        cat >>"$file" <<TOML
[[rounds]]
id = 2
starts_at_ms = $round2
duration_s = $round_s
seed = 2027
[rounds.cash]
total_cents = 30000
envelopes = 600
TOML
    fi
}

# Writes an edge configuration from the annotated example: FILE DIR EDGE_ID ALLOCATOR_ADDR
# WORKERS [PHONES_PER_SOURCE] (any port, loopback). PHONES_PER_SOURCE is how many phones share
# one source address and port, as behind a carrier NAT: the swarm puts PHONES / client_endpoints
# behind each of its loopback addresses. The per-source limits are raised for them the way an
# operator would for such an address: in-progress handshakes and the burst cover them all (the
# burst is per worker, and one address and port reaches one worker). The per-source rate
# stays at its default, so a flood from one address is still refused.
write_edge_config() {
    local file="$1" dir="$2" id="$3" alloc_addr="$4" workers="$5" per_source="${6:-0}"
    local in_progress=$(( per_source > 64 ? per_source : 64 ))
    local burst=$(( (per_source > 200 ? per_source : 200) * workers ))
    sed -e "s#^edge_id = 1#edge_id = $id#" \
        -e "s#^addr = \"127.0.0.1:7400\"#addr = \"$alloc_addr\"#" \
        -e 's#^listen = "127.0.0.1:7443"#listen = "127.0.0.1:0"#' \
        -e 's#^metrics_listen = "127.0.0.1:9443"#metrics_listen = "127.0.0.1:0"#' \
        -e "s#^workers = 0#workers = $workers#" \
        -e "s#^handshakes_per_source = 64 #handshakes_per_source = $in_progress #" \
        -e "s#^new_handshakes_per_source_burst = 200.0 #new_handshakes_per_source_burst = $burst.0 #" \
        -e "s#target/demo/certs/edge-1#$dir/certs/edge-$id#g" \
        -e "s#target/demo/certs#$dir/certs#g" \
        edge/shake-edge.example.toml >"$file"
}

# Phones per source address for a swarm of PHONES run with SCENARIO (its client_endpoints).
phones_per_source() {
    local phones="$1" scenario="$2" endpoints
    endpoints=$(sed -n 's/^client_endpoints = \([0-9]*\).*/\1/p' "$scenario")
    echo $(( (phones + ${endpoints:-8} - 1) / ${endpoints:-8} ))
}

# Peak resident memory of a live process, KiB (0 when it is gone).
peak_kib() { sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$1/status" 2>/dev/null || echo 0; }

# GET http://ADDR/PATH with bash alone (no curl on a bare machine): prints the body. Fails,
# rather than waits for ever, when the server does not answer within 10 s (a stopped or
# wedged server).
http_get() {
    local addr="$1" path="$2" host="${1%:*}" port="${1##*:}"
    exec 9<>"/dev/tcp/$host/$port" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$host" >&9
    local status=0
    timeout 10 sed '1,/^\r\{0,1\}$/d' <&9 || status=$?
    exec 9<&-
    return "$status"
}

# Stops the processes PID...: SIGCONT (a paused one), SIGINT (the servers stop at once; a swarm
# writes its report, marked interrupted), and SIGKILL for any still there after 5 s: a cleanup
# must not wait out a run's duration.
stop_processes() {
    local pid
    for pid in "$@"; do
        kill -CONT "$pid" 2>/dev/null || true
        kill -INT "$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}

# Sum of every sample of a Prometheus metric (NAME, or NAME{labels} as a prefix) at ADDR.
metric_sum() {
    # A bare name is the whole name (awards_owed is not awards_owed_sent_total).
    http_get "$1" /metrics | awk -v p="$2" '
        index($0, p) == 1 && (index(p, "{") > 0 || substr($0, length(p) + 1, 1) ~ /[{ ]/) { s += $NF }
        END { printf "%d\n", s }'
}

# Waits up to SECONDS for the metric NAME at ADDR to read 0, and prints its last value, or
# "missing" when ADDR does not export it (a check that reads a metric must be able to fail).
wait_metric_zero() {
    local addr="$1" name="$2" seconds="$3" value=missing
    for _ in $(seq 1 $(( seconds * 10 ))); do
        value=$(http_get "$addr" /metrics | awk -v p="$name" '
            index($0, p) == 1 && (index(p, "{") > 0 || substr($0, length(p) + 1, 1) ~ /[{ ]/) { s += $NF; n++ }
            END { if (n) printf "%d\n", s; else print "missing" }')
        [ "$value" = 0 ] && break
        sleep 0.1
    done
    echo "$value"
}

# The numeric value of "FIELD": in a one-line JSON file (empty when absent).
json_number() { sed -n "s/.*\"$2\":\(-\{0,1\}[0-9.eE+-]*\).*/\1/p" "$1" | head -n1; }

# Switches an allocator configuration (written by write_allocator_config) to the PostgreSQL
# ledger: FILE URL NODE [LEASE_MS]. The fjall path goes; a [postgres] table comes last.
use_postgres_ledger() {
    local file="$1" url="$2" node="$3" lease_ms="${4:-1500}"
    sed -i "s#^ledger_path = .*#ledger = \"postgres\"#" "$file"
    printf '[postgres]\nurl = "%s"\nnode = "%s"\nlease_ms = %s\nstandby_poll_ms = 100\n' \
        "$url" "$node" "$lease_ms" >>"$file"
    # COMMIT_LANES: the allocators' [postgres] commit_lanes (unset: the allocator's default).
    if [[ -n "${COMMIT_LANES:-}" ]]; then
        printf 'commit_lanes = %s\n' "$COMMIT_LANES" >>"$file"
    fi
}

# Turns on the admin API of an allocator configuration: FILE TOKEN_FILE (any loopback port;
# the token is written to TOKEN_FILE). Top-level keys must come before the first table.
use_admin_api() {
    local file="$1" token_file="$2"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token_file"
    sed -i "1i admin_listen = \"127.0.0.1:0\"\nadmin_token_file = \"$token_file\"" "$file"
}

# A loopback TCP port nothing listens on.
free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$(( 20000 + RANDOM % 20000 ))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return 0; }
    done
    return 1
}
