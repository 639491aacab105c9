#!/usr/bin/env bash
# Runs the whole test suite: unit tests, integration tests over real sockets.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --all-targets
