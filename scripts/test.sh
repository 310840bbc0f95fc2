#!/usr/bin/env bash
# The project's test command (README "Quick start" and .ci/run): every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
# The fuzz crate is left out: its targets are libFuzzer mains that run until stopped;
# tests/fuzz_corpus.rs in proto replays their corpus instead.
cargo test --workspace --exclude shake-fuzz --all-targets --locked "$@"
