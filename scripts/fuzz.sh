#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) and prints, per target, the
# executions, the corpus size and the findings (inputs are kept under target/fuzz/TARGET).
#   scripts/fuzz.sh [SECONDS] [TARGET ...]
# The YAML training config is fuzzed by a test of the temper binary, with the same engine.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
status=0
cargo run --release --locked -q -p temper-fuzz -- --seconds "$seconds" "$@" || status=1
if [ $# -eq 0 ] || printf '%s\n' "$@" | grep -qx yaml_config; then
    TEMPER_FUZZ_SECONDS=$seconds cargo test --release --locked -q -p temper-cli --bin temper \
        fuzz_yaml_config -- --nocapture 2>&1 | grep -E "^yaml_config|FINDING|panicked" || status=1
fi
exit $status
