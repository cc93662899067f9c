#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone. The end-to-end tests drive the real sessiond
# and sessionctl binaries, so those are built first; nothing else needs installing (SQLite and
# everything else come in as bundled crates).
#
# The reliability tests record one row each into target/reliability/; when every test has
# passed, the table they make (the body of docs/reliability.md) is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
rows="$PWD/target/reliability"
rm -rf "$rows"
cargo build --workspace --bins --locked
SESSIOND_RELIABILITY_DIR="$rows" cargo test --workspace --locked
echo "== reliability table from this run"
cargo run --quiet --locked -p sessiond-tests --bin sessiond-reliability-report -- "$rows"
