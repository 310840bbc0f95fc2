#!/usr/bin/env bash
# Throwaway PostgreSQL servers on loopback for the ledger and high-availability tests: a
# primary, synchronous standbys streaming from it, and the faults the tests need (kill, stop,
# promote). Every server lives in its own directory and listens on 127.0.0.1 at the port given
# (never the default 5432, which belongs to whoever runs the machine's own instance).
#
#   scripts/pg-cluster.sh primary DIR PORT [SYNC_NAMES]  # initdb + start; SYNC_NAMES e.g. "s1,s2"
#                                                         #   makes commits wait for ANY 1 of them;
#                                                         #   with PG_TLS_CERT and PG_TLS_KEY (PEM)
#                                                         #   set, it also serves TLS
#   scripts/pg-cluster.sh standby DIR PORT PRIMARY_PORT NAME  # base backup of the primary + start
#   scripts/pg-cluster.sh stop DIR [fast|immediate]       # immediate = a crash (default fast)
#   scripts/pg-cluster.sh kill DIR                        # SIGKILL the postmaster: a lost machine
#   scripts/pg-cluster.sh pause DIR                       # SIGSTOP the server's every process: a
#                                                         #   hung server whose kernel still answers
#   scripts/pg-cluster.sh fence DIR                       # SIGKILL every process of a (paused) server
#   scripts/pg-cluster.sh promote DIR                     # a standby becomes the primary
#   scripts/pg-cluster.sh follow DIR PRIMARY_PORT NAME    # a standby streams from another primary
#   scripts/pg-cluster.sh lsn PORT                        # WAL received (standby) or written
#   scripts/pg-cluster.sh url PORT...                     # the multi-host connection string
#
# With PG_OWNER_PID set, each server started is stopped once that process is gone.
# PostgreSQL refuses to run as root: as root, the servers run as the `postgres` user, which
# owns DIR. Exits non-zero, naming what failed, on any failure.
set -euo pipefail

die() { echo "pg-cluster: $*" >&2; exit 1; }

bindir() {
    local dir
    # The newest version whose server is installed (a newer client-only package has no initdb).
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V |
        while read -r d; do [[ -x "$d/initdb" ]] && echo "$d"; done | tail -1 || true)
    [[ -n "$dir" && -x "$dir/initdb" ]] || dir=$(dirname "$(command -v initdb 2>/dev/null || true)")
    [[ -x "$dir/initdb" ]] || die "PostgreSQL server binaries (initdb) not found: apt-get install postgresql"
    echo "$dir"
}

as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

prepare_dir() {
    local dir=$1
    rm -rf "$dir"
    mkdir -p "$dir"
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres:postgres "$dir"
        # The server must reach its directory through every parent.
        local parent
        parent=$(dirname "$dir")
        while [[ "$parent" != "/" ]]; do
            chmod o+x "$parent" 2>/dev/null || true
            parent=$(dirname "$parent")
        done
    fi
}

start_server() {
    local dir=$1
    # Every core, whatever the caller was pinned to (a benchmark pins itself to one).
    local all=()
    command -v taskset >/dev/null && all=(taskset -c "0-$(( $(nproc --all) - 1 ))")
    local owner=()
    [[ $(id -u) -ne 0 ]] || owner=(runuser -u postgres --)
    "${all[@]}" "${owner[@]}" "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
        die "server in $dir did not start: $(tail -5 "$dir/server.log" 2>/dev/null)"
    [[ -z "${PG_OWNER_PID:-}" ]] || watch_owner "$dir" "$PG_OWNER_PID"
}

# With PG_OWNER_PID set (a test's or a script's own PID), the server is stopped (immediate)
# once that process is gone: a test binary killed by a timeout, or a script killed with
# SIGKILL, never runs its cleanup, and its servers would hold their ports and memory until
# the machine restarts. The watcher is detached from the caller and ends with the server.
watch_owner() {
    local dir=$1 owner_pid=$2
    [[ "$owner_pid" =~ ^[0-9]+$ ]] || die "PG_OWNER_PID is not a process id: $owner_pid"
    setsid bash -c '
        dir=$1 owner_pid=$2 bin=$3
        while [[ -f "$dir/data/postmaster.pid" ]]; do
            if ! kill -0 "$owner_pid" 2>/dev/null; then
                if [[ $(id -u) -eq 0 ]]; then
                    runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m immediate stop
                else
                    "$bin/pg_ctl" -D "$dir/data" -m immediate stop
                fi
                exit
            fi
            sleep 1
        done' pg-owner-watch "$dir" "$owner_pid" "$BIN" </dev/null >/dev/null 2>&1 &
}

cmd=${1:-}
shift || true
case "$cmd" in
primary)
    [[ $# -ge 2 ]] || die "usage: primary DIR PORT [SYNC_NAMES]"
    dir=$(realpath -m "$1") port=$2 sync=${3:-}
    BIN=$(bindir)
    prepare_dir "$dir"
    as_owner "$BIN/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null ||
        die "initdb in $dir failed"
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$dir'"
        echo "wal_level = replica"
        echo "max_wal_senders = 10"
        echo "max_replication_slots = 10"
        echo "wal_keep_size = '256MB'"
        echo "hot_standby = on"
        echo "max_connections = 60"
        # What a ledger server wants (README "High availability"): its award indexes in
        # memory; no checkpoint forced by WAL volume during a round; and no 16 MB of zeros
        # written and fsynced each time a WAL segment is created (the 100-150 ms commit
        # stalls seen every ~45,000 awards in scripts/bench.sh allocator before this).
        echo "shared_buffers = '512MB'"
        echo "max_wal_size = '4GB'"
        echo "wal_init_zero = off"
        # Commit times, so a test can prove what committed after what (fencing).
        echo "track_commit_timestamp = on"
        if [[ -n "$sync" ]]; then
            echo "synchronous_standby_names = 'ANY 1 (${sync})'"
        fi
    } >>"$dir/data/postgresql.conf"
    echo "host all,replication all 127.0.0.1/32 trust" >>"$dir/data/pg_hba.conf"
    if [[ -n "${PG_TLS_CERT:-}" && -n "${PG_TLS_KEY:-}" ]]; then
        cp "$PG_TLS_CERT" "$dir/data/server.crt"
        cp "$PG_TLS_KEY" "$dir/data/server.key"
        chmod 600 "$dir/data/server.key"
        [[ $(id -u) -ne 0 ]] || chown postgres:postgres "$dir/data/server.crt" "$dir/data/server.key"
        echo "ssl = on" >>"$dir/data/postgresql.conf"
    fi
    start_server "$dir"
    ;;
standby)
    [[ $# -eq 4 ]] || die "usage: standby DIR PORT PRIMARY_PORT NAME"
    dir=$(realpath -m "$1") port=$2 primary=$3 name=$4
    BIN=$(bindir)
    prepare_dir "$dir"
    as_owner "$BIN/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres -D "$dir/data" \
        -X stream -R -c fast --no-sync >/dev/null || die "base backup from port $primary failed"
    # After the base backup's own settings (postgresql.auto.conf is read last, so it wins):
    # the name is what the primary's synchronous_standby_names lists.
    {
        echo "port = $port"
        echo "unix_socket_directories = '$dir'"
        echo "primary_conninfo = 'host=127.0.0.1 port=$primary user=postgres application_name=$name'"
    } >>"$dir/data/postgresql.auto.conf"
    start_server "$dir"
    ;;
stop)
    [[ $# -ge 1 ]] || die "usage: stop DIR [fast|immediate]"
    dir=$(realpath -m "$1") mode=${2:-fast}
    BIN=$(bindir)
    # A server already dead (killed by a test) is stopped.
    as_owner "$BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1 || exit 0
    pid=$(head -1 "$dir/data/postmaster.pid" 2>/dev/null || true)
    # A killed postmaster that nobody reaps (no init in a container) reads as running.
    [[ -z $pid || $(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) != Z ]] || exit 0
    # A paused server (`pause`) would never act on the stop.
    [[ -z $pid ]] || kill -CONT "$pid" $(pgrep -P "$pid" || true) 2>/dev/null || true
    as_owner "$BIN/pg_ctl" -D "$dir/data" -m "$mode" -w -t 60 stop >/dev/null || die "stopping $dir failed"
    ;;
kill)
    [[ $# -eq 1 ]] || die "usage: kill DIR"
    dir=$(realpath -m "$1")
    pid=$(head -1 "$dir/data/postmaster.pid" 2>/dev/null) || die "no server running in $dir"
    kill -KILL "$pid"
    # The postmaster's children notice its death within a second or so and exit.
    for _ in $(seq 50); do
        pgrep -P "$pid" >/dev/null 2>&1 || break
        sleep 0.1
    done
    ;;
pause | fence)
    [[ $# -eq 1 ]] || die "usage: $cmd DIR"
    dir=$(realpath -m "$1")
    pid=$(head -1 "$dir/data/postmaster.pid" 2>/dev/null) || die "no server running in $dir"
    [[ -n $pid ]] || die "no server running in $dir"
    # The postmaster first (stopped, it forks no new backend), then its children (backends,
    # WAL sender, checkpointer): a server stopped whole still completes TCP handshakes and
    # acknowledges data, in its kernel. A child may have ended meanwhile.
    signal=STOP
    [[ $cmd == pause ]] || signal=KILL
    kill -"$signal" "$pid" || die "no server running in $dir"
    children=$(pgrep -P "$pid" || true)
    [[ -z $children ]] || kill -"$signal" $children 2>/dev/null || true
    ;;
promote)
    [[ $# -eq 1 ]] || die "usage: promote DIR"
    dir=$(realpath -m "$1")
    BIN=$(bindir)
    as_owner "$BIN/pg_ctl" -D "$dir/data" -w -t 60 promote >/dev/null || die "promoting $dir failed"
    ;;
follow)
    [[ $# -eq 3 ]] || die "usage: follow DIR PRIMARY_PORT NAME"
    dir=$(realpath -m "$1") primary=$2 name=$3
    BIN=$(bindir)
    # Reloadable since PostgreSQL 13; the standby follows the new primary's timeline.
    echo "primary_conninfo = 'host=127.0.0.1 port=$primary user=postgres application_name=$name'" \
        >>"$dir/data/postgresql.auto.conf"
    as_owner "$BIN/pg_ctl" -D "$dir/data" reload >/dev/null || die "reloading $dir failed"
    ;;
lsn)
    [[ $# -eq 1 ]] || die "usage: lsn PORT"
    psql -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atc \
        "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() - '0/0'
                ELSE pg_current_wal_lsn() - '0/0' END" || die "no server on port $1"
    ;;
url)
    [[ $# -ge 1 ]] || die "usage: url PORT..."
    hosts=$(printf '127.0.0.1,%.0s' "$@")
    ports=$(IFS=,; echo "$*")
    echo "host=${hosts%,} port=$ports user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2"
    ;;
*)
    die "usage: pg-cluster.sh primary|standby|stop|kill|pause|fence|promote|follow|lsn|url ..."
    ;;
esac
