#!/usr/bin/env bash
# The no-Python ceiling: the real producer, stores and completer with a no-op executor in Rust
# (rust/fasttasks-core/examples/ceiling.rs). Usage: benches/ceiling.sh [JOBS] [CONCURRENCY...]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${1:-50000}"; shift || true
concurrencies=("${@:-8 64 256}")
cargo build --quiet --release -p fasttasks-core --example ceiling
for c in ${concurrencies[*]}; do
    ./target/release/examples/ceiling sqlite "${TMPDIR:-/tmp}/fasttasks-ceiling.sqlite3" "$jobs" "$c"
    ./target/release/examples/ceiling postgres fasttasks_ceiling "$jobs" "$c"
done
