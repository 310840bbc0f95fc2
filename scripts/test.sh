#!/usr/bin/env bash
# The project's test command (README "Quick start" and .ci/run): every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
# A failing test's message without a backtrace unless SHAKE_TEST_BACKTRACE=1 asks for one
# (RUST_BACKTRACE set in the environment is overridden): the failpoint tests panic on purpose,
# and their backtraces and the failures' own pushed the failures' messages out of the part of
# a CI log that is kept.
export RUST_BACKTRACE="${SHAKE_TEST_BACKTRACE:-0}"
# The fuzz crate is left out: its targets are libFuzzer mains that run until stopped;
# tests/fuzz_corpus.rs in proto replays their corpus instead.
# Integration tests start the real binaries of other crates (the relay, the swarm, the phone),
# which `cargo test` only builds for the crate under test: build every binary first, so a fresh
# checkout finds them and none is stale.
# The binaries are built with what changes where the tests look for them and what they are
# (the profile, the target and its directory, the features): the tests start the ones beside
# them, so binaries built otherwise would be missing or, worse, stale from an earlier build.
build=()
args=("$@")
for i in "${!args[@]}"; do
    case "${args[$i]}" in
        --) break ;;
        -r | --release | --all-features | --no-default-features | --offline | --frozen) build+=("${args[$i]}") ;;
        --profile=* | --target=* | --target-dir=* | --features=* | --config=* | -F?* | -Z?*)
            build+=("${args[$i]}") ;;
        --profile | --target | --target-dir | --features | -F | --config | -Z)
            build+=("${args[$i]}" "${args[$((i + 1))]:-}") ;;
    esac
done
cargo build --workspace --exclude shake-fuzz --bins --locked ${build[@]+"${build[@]}"}
cargo test --workspace --exclude shake-fuzz --all-targets --locked "$@"
# `--all-targets` leaves out doctests: the examples in the docs run here.
cargo test --workspace --exclude shake-fuzz --doc --locked "$@"
