#!/usr/bin/env bash
# Runs the relay over https:// and wss:// on https://localhost:8443 with development certificates
# in certs/ (made on first use; trust certs/dev-ca.pem once, see certs/README.md).
# Extra arguments go to the relay, e.g. scripts/dev-tls.sh --server-info demo
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -- --dev-tls --listen 127.0.0.1:8443 "$@"
