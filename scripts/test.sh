#!/usr/bin/env bash
# Runs the whole test suite: unit and integration tests over real sockets and real TLS, then the
# client library's tests in Node, then the browser tests of the demo in headless Chromium.
#
# Needs, besides Rust: openssl (one TLS test makes an RSA key with it), redis-server (the cluster
# tests start their own), Node.js 20+ with npm, and Debian's chromium. Missing Debian packages are
# installed when running as root with apt-get; otherwise the script says what to install and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq
    # RUNLEVEL=1: install redis-server without starting its system service; the tests start
    # their own on free loopback ports.
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test.sh: please install ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
command -v npm >/dev/null || { echo "test.sh: Node.js 20+ with npm is needed for the client and browser tests" >&2; exit 1; }

cargo test --locked --workspace --all-targets
tests/client/run.sh
tests/browser/run.sh
