#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end tests against a real broker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WEIR_TOOLS=${WEIR_TOOLS:-/var/cache/weir/tools}
export PATH="$HOME/.cargo/bin:$WEIR_TOOLS/bin:$PATH"
cargo test --workspace --all-targets -- --test-threads=2
