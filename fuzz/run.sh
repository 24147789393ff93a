#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each (default 600), two at a time, on stable Rust
# (cargo fuzz with the sanitizer off; RUSTC_BOOTSTRAP is not needed). Needs `cargo install cargo-fuzz`.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
cargo fuzz build -s none -O
run() { mkdir -p "corpus/$1"; cargo fuzz run -s none -O "$1" "corpus/$1" "seeds/$1" -- -max_total_time="$seconds" -rss_limit_mb=2048 > "/tmp/fuzz-$1.log" 2>&1; echo "$1: exit $? ($(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "/tmp/fuzz-$1.log" | tail -1))"; }
run estimate & run sse_scanner & wait
run usage & run route & wait
run config & run usage_chunk & wait
run json_scan & run retry_after & wait
