#!/usr/bin/env bash
# Runs the whole test suite: unit and integration tests over real sockets and real TLS, then the
# browser tests of the demo in headless Chromium (tests/browser/run.sh; needs /usr/bin/chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --workspace --all-targets
tests/browser/run.sh
