#!/usr/bin/env bash
# Makes sure Debian's chromium and chromedriver are installed (for the dashboard's browser
# test), installing them with apt-get when missing, and prints their paths, one per line.
set -euo pipefail
find_bins() { command -v chromium && command -v chromedriver; }
if ! find_bins >/dev/null 2>&1; then
    echo "browser.sh: installing chromium and chromium-driver (Debian packages)" >&2
    as_root=()
    # -n: a sudo that would ask for a password fails at once (a test has no one to answer it).
    [ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get install -y -q chromium chromium-driver >&2 ||
        { "${as_root[@]}" apt-get update -q >&2 && "${as_root[@]}" apt-get install -y -q chromium chromium-driver >&2; } ||
        { echo "browser.sh: could not install chromium" >&2; exit 1; }
fi
find_bins
