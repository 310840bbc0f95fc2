#!/usr/bin/env bash
# Prints the path of a promtool (Prometheus's rule checker and rule unit tester) for the alert
# rules' tests: the one on PATH, else one taken from Debian's prometheus package into
# target/tools, downloaded with apt-get and unpacked, not installed (no service, no user,
# nothing started). Fails, saying why, when neither can be had.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v promtool >/dev/null 2>&1; then
    echo "promtool.sh: $(promtool --version 2>&1 | head -n1) from PATH" >&2
    command -v promtool
    exit 0
fi
tools="$PWD/target/tools"
mkdir -p "$tools"
# One fetch at a time: tests run in parallel, and apt's own lock fails a second apt-get at
# once instead of waiting.
exec 9>"$tools/.promtool.lock"
flock -w 300 9 || { echo "promtool.sh: another fetch held the lock for 5 minutes" >&2; exit 1; }
if [ -x "$tools/promtool" ]; then
    echo "$tools/promtool"
    exit 0
fi
echo "promtool.sh: taking promtool from Debian's prometheus package" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
as_root=()
# -n: a sudo that would ask for a password fails at once (a test has no one to answer it).
[ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
download() { (cd "$work" && apt-get download -q prometheus >&2); }
download || { "${as_root[@]}" apt-get update -q >&2 && download; } ||
    { echo "promtool.sh: could not download Debian's prometheus package" >&2; exit 1; }
dpkg-deb -x "$work"/prometheus_*.deb "$work/unpacked"
# Renamed into place: a test running this at the same time never starts a half-written file.
install -m 0755 "$work/unpacked/usr/bin/promtool" "$tools/promtool.$$"
mv -f "$tools/promtool.$$" "$tools/promtool"
echo "$tools/promtool"
