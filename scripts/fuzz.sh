#!/usr/bin/env bash
# Runs the wire-decoder fuzz target for a bounded time: scripts/fuzz.sh [SECONDS] (default 60).
# Needs a nightly toolchain and cargo-fuzz (installed here if missing). Where either cannot be
# had, it says so and exits 0: the proptest suites still cover the decoders.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: SKIPPED — no nightly toolchain on this machine (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    if ! cargo install cargo-fuzz --locked >/dev/null 2>&1; then
        echo "fuzz: SKIPPED — cargo-fuzz could not be installed"
        exit 0
    fi
fi
# Run on a copy of the committed corpus, so a run adds nothing to the tree by accident.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp fuzz/corpus/frames/* "$work/"
echo "fuzz: frames for ${seconds}s, corpus of $(ls "$work" | wc -l) inputs"
cd fuzz
log="$work.log"
status=0
cargo +nightly fuzz run frames "$work" -- -max_total_time="$seconds" -rss_limit_mb=1024 \
    >"$log" 2>&1 || status=$?
grep -E "^(#[0-9]+\s+DONE|Done|INFO: seed|==[0-9]+==ERROR|SUMMARY|thread .* panicked)" "$log" || true
if [ "$status" -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz: FAILED (exit $status); the crashing input is under fuzz/artifacts/frames;"
    echo "      reproduce with: cd fuzz && cargo +nightly fuzz run frames <that file>"
    exit "$status"
fi
rm -f "$log"
echo "fuzz: passed"
