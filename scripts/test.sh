#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end tests against a real broker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --workspace --all-targets -- --test-threads=2
