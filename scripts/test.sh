#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone. The end-to-end tests drive the real sessiond
# and sessionctl binaries, so those are built first; nothing else needs installing (SQLite and
# everything else come in as bundled crates).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --locked
cargo test --workspace --locked
